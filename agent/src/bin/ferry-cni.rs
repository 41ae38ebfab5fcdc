//! ferry's CNI plugin binary: CNI_* environment in, configuration on stdin,
//! result or error JSON on stdout (see `ferry_agent::cni`).
use std::io::Read;

use ferry_agent::cni::{self, CniError, Env, code};

fn main() {
    let vars = std::env::vars().collect();
    let env = Env::from_vars(&vars);
    let mut stdin = String::new();
    let outcome = if std::io::stdin().read_to_string(&mut stdin).is_ok() {
        cni::run(&env, &stdin)
    } else {
        Err(CniError::new(
            code::IO_FAILURE,
            "cannot read the configuration from stdin",
            "",
        ))
    };
    match outcome {
        Ok(Some(result)) => println!("{result}"),
        Ok(None) => {}
        Err(e) => {
            let version = serde_json::from_str::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
                .unwrap_or_else(|| cni::SUPPORTED_VERSIONS[0].to_string());
            println!("{}", e.to_json(&version));
            std::process::exit(1);
        }
    }
}
