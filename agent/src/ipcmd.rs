//! iproute2, run as a child process: the CNI plugin's hands for links,
//! addresses, routes and neighbours, in the current namespace or (through
//! nsenter) in a pod's. iproute2 is a dependency of ferry on every node.
use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

#[derive(Debug, thiserror::Error)]
pub enum IpError {
    #[error("cannot run {program}: {source}; is iproute2 (and util-linux's nsenter) installed?")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

impl IpError {
    /// The object is already gone (deleting twice is fine). A route that is
    /// gone answers "No such process" (ESRCH).
    pub fn is_missing(&self) -> bool {
        matches!(self, IpError::Failed { stderr, .. }
            if stderr.contains("Cannot find device")
                || stderr.contains("does not exist")
                || stderr.contains("No such process"))
    }
}

fn run(mut cmd: Command, stdin: Option<&str>, display: String) -> Result<String, IpError> {
    let program = if cmd.get_program() == "nsenter" {
        "nsenter"
    } else {
        "ip"
    };
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|source| IpError::Spawn { program, source })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped");
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| IpError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(IpError::Failed {
            command: display,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` in the current network namespace.
pub fn ip(args: &[&str]) -> Result<String, IpError> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run(cmd, None, format!("ip {}", args.join(" ")))
}

/// `ip ARGS` inside the network namespace at `netns`.
pub fn ip_in(netns: &Path, args: &[&str]) -> Result<String, IpError> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("ip")
        .args(args);
    run(
        cmd,
        None,
        format!("nsenter --net={} ip {}", netns.display(), args.join(" ")),
    )
}

/// Several commands in one `ip -batch -` inside `netns`, stopping at the
/// first failure.
pub fn ip_batch_in(netns: &Path, commands: &[String]) -> Result<(), IpError> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .args(["ip", "-batch", "-"]);
    let script = commands.join("\n") + "\n";
    run(
        cmd,
        Some(&script),
        format!(
            "nsenter --net={} ip -batch: {}",
            netns.display(),
            commands.join("; ")
        ),
    )
    .map(|_| ())
}

/// (ifindex, MAC) of `ifname`, from `ip -json link show` output.
pub fn parse_link_json(json: &str) -> Option<(u32, [u8; 6])> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let link = v.get(0)?;
    let ifindex = link.get("ifindex")?.as_u64()? as u32;
    let mac = crate::net::parse_mac(link.get("address")?.as_str()?)?;
    Some((ifindex, mac))
}

/// (ifindex, MAC) of a link in the current namespace.
pub fn link_info(ifname: &str) -> Result<Option<(u32, [u8; 6])>, IpError> {
    match ip(&["-json", "link", "show", "dev", ifname]) {
        Ok(out) => Ok(parse_link_json(&out)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

/// (ifindex, MAC) of a link inside `netns`.
pub fn link_info_in(netns: &Path, ifname: &str) -> Result<Option<(u32, [u8; 6])>, IpError> {
    match ip_in(netns, &["-json", "link", "show", "dev", ifname]) {
        Ok(out) => Ok(parse_link_json(&out)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ifindex_and_mac() {
        let json = r#"[{"ifindex":2,"link_index":5,"ifname":"eth0","mtu":1500,"address":"b6:12:e2:1d:e0:3c"}]"#;
        assert_eq!(
            parse_link_json(json),
            Some((2, [0xb6, 0x12, 0xe2, 0x1d, 0xe0, 0x3c]))
        );
        assert_eq!(parse_link_json("[]"), None);
    }
}
