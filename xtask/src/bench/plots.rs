//! The benchmark's pictures, next to its text report: connection rate
//! against the number of Services for every path, and the time each
//! programs the Service set. SVG (plotters), so no font is needed.
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::{pod_to_service::Rates, programming::SyncTimes};

/// One size's figures.
pub struct Point {
    pub services: usize,
    pub rates: Rates,
    pub sync: SyncTimes,
    /// kube-proxy's rates at this size were measured on the walked part
    /// of its rule sets (its whole sets do not load here): marked in the
    /// plot, so the points are not read as whole-set figures.
    pub kube_proxy_walked: bool,
}

/// The legend of the ring around kube-proxy's walked-part points.
const WALKED_LEGEND: &str = "ring: kube-proxy measured on the walked part of its rules";

/// A named line: (services, value) points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Write the plots into `dir`; their paths.
pub fn write(dir: &Path, points: &[Point]) -> Result<Vec<PathBuf>> {
    if points.is_empty() {
        return Ok(vec![]);
    }
    let at = |f: fn(&Point) -> f64| -> Vec<(f64, f64)> {
        points.iter().map(|p| (p.services as f64, f(p))).collect()
    };
    // The 10-Service nodes are measured at every size: their median.
    let small = |f: fn(&Rates) -> f64| -> Vec<(f64, f64)> {
        let mut v: Vec<f64> = points.iter().map(|p| f(&p.rates)).collect();
        v.sort_by(f64::total_cmp);
        vec![(10.0, v[v.len() / 2])]
    };
    let mut ferry = small(|r| r.ferry_small);
    ferry.extend(at(|p| p.rates.ferry_large));
    let mut socket_lb = small(|r| r.socket_lb_small);
    socket_lb.extend(at(|p| p.rates.socket_lb_large));
    let rates: Vec<Series> = vec![
        ("direct pod IP (no ferry)", BLACK, at(|p| p.rates.direct)),
        ("ferry ClusterIP (tc)", BLUE, ferry),
        ("ferry ClusterIP (socket LB)", CYAN, socket_lb),
        ("kube-proxy iptables", RED, at(|p| p.rates.iptables)),
        ("kube-proxy nftables", MAGENTA, at(|p| p.rates.nftables)),
    ];
    let sync: Vec<Series> = vec![
        ("ferry full sync", BLUE, at(|p| p.sync.ferry_full)),
        (
            "ferry, one endpoint changed",
            CYAN,
            at(|p| p.sync.ferry_one),
        ),
        ("iptables-restore", RED, at(|p| p.sync.iptables)),
        ("nft -f", MAGENTA, at(|p| p.sync.nftables)),
    ];
    let walked: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.kube_proxy_walked)
        .flat_map(|p| {
            let x = p.services as f64;
            [(x, p.rates.iptables), (x, p.rates.nftables)]
        })
        .filter(|p| p.1.is_finite())
        .collect();
    let rates_svg = dir.join("bench-connection-rate.svg");
    let sync_svg = dir.join("bench-sync-time.svg");
    plot(
        &rates_svg,
        "Connections per second, pod to Service, by number of Services",
        "connections/s",
        &rates,
        &walked,
    )?;
    plot(
        &sync_svg,
        "Time to program the Service set (10 endpoints each)",
        "ms",
        &sync,
        &[],
    )?;
    Ok(vec![rates_svg, sync_svg])
}

/// One chart: a log-scale axis of Services, a linear one of `unit`; a
/// ring around each of the `walked` points.
fn plot(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[Series],
    walked: &[(f64, f64)],
) -> Result<()> {
    let all = series.iter().flat_map(|(_, _, v)| v.iter());
    let (x_max, y_max) = all.fold((10.0f64, 1.0f64), |(x, y), &(px, py)| {
        (x.max(px), if py.is_finite() { y.max(py) } else { y })
    });
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((5.0f64..x_max * 2.0).log_scale(), 0.0f64..y_max * 1.15)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("Services (log scale)")
        .y_desc(unit)
        .draw()
        .map_err(draw)?;
    if !walked.is_empty() {
        // Drawn first, so the legend that draw_lines configures lists it.
        chart
            .draw_series(
                walked
                    .iter()
                    .map(|p| Circle::new(*p, 9, BLACK.stroke_width(1))),
            )
            .map_err(draw)?
            .label(WALKED_LEGEND)
            .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.stroke_width(1)));
    }
    let lines = series.iter().map(|(name, color, points)| {
        let points = points.iter().copied().filter(|p| p.1.is_finite()).collect();
        (name.to_string(), *color, points)
    });
    draw_lines(&mut chart, lines, 4, SeriesLabelPosition::LowerLeft)?;
    root.present().map_err(draw)?;
    Ok(())
}

/// Each named line with a marker on its points, and the legend at `legend`.
fn draw_lines<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    lines: impl Iterator<Item = (String, RGBColor, Vec<(f64, f64)>)>,
    marker: u32,
    legend: SeriesLabelPosition,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (name, color, points) in lines {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(draw)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new(*p, marker, color.filled())),
            )
            .map_err(draw)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(legend)
        .draw()
        .map_err(draw)?;
    Ok(())
}

/// A histogram of latencies (ms) per named series, as lines over
/// log-spaced buckets (ten a decade): the share of each series' values in
/// each bucket, so series of different sizes compare.
pub fn latency_histogram(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> Result<()> {
    const PER_DECADE: f64 = 10.0;
    const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let all = || {
        series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| *v > 0.0)
    };
    let lo = all().fold(f64::INFINITY, f64::min);
    let hi = all().fold(0.0f64, f64::max);
    let (lo, hi) = if lo.is_finite() {
        (lo, hi)
    } else {
        (1.0, 10.0)
    };
    let first = (lo.log10() * PER_DECADE).floor() as i32;
    let last = (hi.log10() * PER_DECADE).floor() as i32;
    let edge = |b: i32| 10f64.powf(f64::from(b) / PER_DECADE);
    let mut lines = Vec::new();
    let mut y_max = 1.0f64;
    for (name, values) in series {
        let mut counts = vec![0usize; (last - first + 1) as usize];
        for v in values.iter().filter(|v| **v > 0.0) {
            let b = ((v.log10() * PER_DECADE).floor() as i32).clamp(first, last);
            counts[(b - first) as usize] += 1;
        }
        let total = values.len().max(1) as f64;
        let points: Vec<(f64, f64)> = counts
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let b = first + k as i32;
                ((edge(b) * edge(b + 1)).sqrt(), 100.0 * *c as f64 / total)
            })
            .collect();
        y_max = points.iter().fold(y_max, |m, p| m.max(p.1));
        lines.push((name.clone(), points));
    }
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (edge(first)..edge(last + 1)).log_scale(),
            0.0f64..y_max * 1.15,
        )
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("change -> map latency, ms (log scale)")
        .y_desc("% of the changes, per bucket")
        .draw()
        .map_err(draw)?;
    let lines = lines
        .into_iter()
        .enumerate()
        .map(|(k, (name, points))| (name, COLORS[k % COLORS.len()], points));
    draw_lines(&mut chart, lines, 3, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(draw)?;
    Ok(())
}

fn draw<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_drawn_with_its_name() {
        let rates = |scale: f64| Rates {
            direct: 9000.0,
            ferry_small: 8800.0,
            ferry_large: 8700.0 * scale,
            iptables: 6000.0 * scale,
            nftables: 7000.0 * scale,
            socket_lb_small: 9500.0,
            socket_lb_large: 9400.0 * scale,
        };
        let sync = |n: f64| SyncTimes {
            ferry_full: n / 100.0,
            ferry_one: 1.0,
            iptables: n / 10.0,
            nftables: n / 5.0,
        };
        let points = [
            Point {
                services: 1000,
                rates: rates(1.0),
                sync: sync(1000.0),
                kube_proxy_walked: false,
            },
            Point {
                services: 10_000,
                rates: rates(0.9),
                sync: sync(10_000.0),
                kube_proxy_walked: false,
            },
        ];
        let dir = std::env::temp_dir().join(format!("ferry-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = write(&dir, &points).unwrap();
        assert_eq!(written.len(), 2);
        let rates_svg = std::fs::read_to_string(&written[0]).unwrap();
        for name in [
            "direct pod IP (no ferry)",
            "ferry ClusterIP (tc)",
            "kube-proxy iptables",
            "kube-proxy nftables",
        ] {
            assert!(rates_svg.contains(name), "{name} missing");
        }
        assert!(rates_svg.contains("<polyline"), "no line drawn");
        assert!(
            !rates_svg.contains(WALKED_LEGEND),
            "whole-set points marked as walked"
        );
        let sync_svg = std::fs::read_to_string(&written[1]).unwrap();
        assert!(sync_svg.contains("iptables-restore") && sync_svg.contains("ferry full sync"));

        let mut walked = points;
        walked[1].kube_proxy_walked = true;
        let written = write(&dir, &walked).unwrap();
        let rates_svg = std::fs::read_to_string(&written[0]).unwrap();
        assert!(
            rates_svg.contains(WALKED_LEGEND),
            "walked points not marked"
        );
        // The two kube-proxy points at 10,000 Services get a ring each,
        // the legend one more; the filled markers are r="4".
        assert_eq!(rates_svg.matches("r=\"9\"").count(), 2, "{rates_svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn latency_histogram_draws_every_series() {
        let dir = std::env::temp_dir().join(format!("ferry-churn-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.svg");
        let series = vec![
            (
                "10000 services, 100/s".to_string(),
                vec![21.0, 25.0, 30.0, 900.0],
            ),
            ("10000 services, 1000/s".to_string(), vec![]),
        ];
        latency_histogram(&path, "latency", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("10000 services, 100/s") && svg.contains("<polyline"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
