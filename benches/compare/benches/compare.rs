//! The whole comparison with rotortree 0.20 in one run, on one machine:
//! every workload of `tree_latency` (one task, 1,000 tasks, fire-and-forget,
//! `insert_many` batches; on each I/O backend) and of `checkpoint`, and
//! (ringtree alone: rotortree has none) of `rewind`: rewinds, history and
//! durable reads; then a table of figures, ratios and targets (printed, and
//! written as CSV and Markdown) and the latency distributions drawn as an
//! SVG.
//!
//! `cargo bench --bench compare` (about three minutes). Writes to
//! `RINGTREE_BENCH_OUT` (default `target/compare`): `results.csv`,
//! `results.md`, `latency_cdf.svg`. Other settings as for the two benches:
//! `RINGTREE_BENCH_DIR`, `RINGTREE_BENCH_SECS` (5), `RINGTREE_BENCH_IO`
//! (`threaded`, `uring`; default both for the latency workloads, threaded
//! for checkpoints), `RINGTREE_BENCH_LEAVES` (checkpoint size, 10,000,000).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hdrhistogram::Histogram;
use plotters::prelude::*;

#[path = "checkpoint.rs"]
mod checkpoint;
#[path = "rewind.rs"]
mod rewind;
#[path = "tree_latency.rs"]
mod tree_latency;

/// One line of the table.
struct Line {
    workload: String,
    metric: &'static str,
    ringtree: f64,
    rotortree: f64,
    /// Raw fdatasync, where it applies.
    raw: Option<f64>,
    /// `ringtree / rotortree` (or `/ raw` for `vs_raw` lines).
    ratio: f64,
    target: &'static str,
    met: Option<bool>,
}

struct Table(Vec<Line>);

impl Table {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        workload: impl Into<String>,
        metric: &'static str,
        ringtree: f64,
        rotortree: f64,
        raw: Option<f64>,
        ratio: f64,
        target: &'static str,
        met: Option<bool>,
    ) {
        self.0.push(Line {
            workload: workload.into(),
            metric,
            ringtree,
            rotortree,
            raw,
            ratio,
            target,
            met,
        });
    }

    fn csv(&self) -> String {
        let mut s =
            String::from("workload,metric,ringtree,rotortree,raw,ratio,target,target_met\n");
        for l in &self.0 {
            let _ = writeln!(
                s,
                "{},{},{:.3},{:.3},{},{:.4},{},{}",
                l.workload,
                l.metric,
                l.ringtree,
                l.rotortree,
                l.raw.map_or(String::new(), |r| format!("{r:.3}")),
                l.ratio,
                l.target,
                l.met.map_or(String::new(), |m| m.to_string())
            );
        }
        s
    }

    fn markdown(&self, machine: &str) -> String {
        let mut s = format!("Machine: {machine}\n\n");
        s += "| workload | metric | ringtree | rotortree 0.20 | raw fdatasync | ratio | target | met |\n";
        s += "|---|---|---|---|---|---|---|---|\n";
        for l in &self.0 {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.2}× | {} | {} |",
                l.workload,
                l.metric,
                fmt(l.ringtree),
                fmt(l.rotortree),
                l.raw.map_or("".into(), fmt),
                l.ratio,
                l.target,
                match l.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                }
            );
        }
        s
    }
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        // rotortree has no such operation.
        "—".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn p(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// What this machine is, in one line.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB, Linux {kernel}")
}

/// The CDF of `h` as (latency µs, fraction) points.
fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    (0..=1000)
        .map(|k| {
            let q = f64::from(k) / 1000.0;
            ((h.value_at_quantile(q) as f64 / 1000.0).max(1.0), q)
        })
        .collect()
}

type Series = Vec<(String, Histogram<u64>)>;

/// Two panels of CDFs: one task, and many concurrent writers.
fn draw(path: &Path, panels: &[(&str, Series)]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len()));
    let colors = [BLUE, RED, BLACK, GREEN, MAGENTA, CYAN];
    for ((title, series), area) in panels.iter().zip(&areas) {
        let lo = series
            .iter()
            .map(|(_, h)| h.min() as f64 / 1000.0)
            .fold(f64::MAX, f64::min)
            .max(1.0)
            * 0.8;
        let hi = series
            .iter()
            .map(|(_, h)| h.value_at_quantile(0.999) as f64 / 1000.0)
            .fold(1.0, f64::max)
            * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("durable-insert latency, µs (log)")
            .y_desc("fraction of inserts")
            .draw()?;
        for (i, (name, h)) in series.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(cdf(h), c.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Runs the checkpoint workload for `who` in a child process (its own peak
/// RSS) and returns its figures by label.
fn checkpoint_child(who: &str) -> Vec<(String, f64)> {
    // What earlier sections removed is discarded before, not during, it.
    tree_latency::common::settle();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe).args(["--child", who]).output().unwrap();
    assert!(
        out.status.success(),
        "{who}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let at = l.find(|c: char| c.is_ascii_digit())?;
            let label = l[..at].trim().to_owned();
            let num: String = l[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            Some((label, num.parse().ok()?))
        })
        .collect()
}

fn main() {
    if checkpoint::run_child() {
        return;
    }
    let leaves = checkpoint::leaves();
    let tree_latency::Setup {
        dir: base,
        secs,
        ios,
        rt,
    } = tree_latency::setup();
    // Under the workspace root's `target/`: a bench runs in its package's folder.
    let out =
        PathBuf::from(std::env::var("RINGTREE_BENCH_OUT").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/compare").into()
        }));
    std::fs::create_dir_all(&out).unwrap();
    let machine = machine();
    println!("Machine: {machine}");
    let mut t = Table(Vec::new());
    let mut one: Series = Vec::new();
    let mut many: Series = Vec::new();

    println!("== one task, insert + await durable x2000");
    for &io in &ios {
        let tree_latency::OneTask {
            raw,
            floor,
            ours,
            theirs,
        } = tree_latency::one_task(&rt, &base, io, 2000);
        let (o, r, w) = (p(&ours, 0.5), p(&theirs, 0.5), p(&raw, 0.5));
        let wl = format!("one task, insert + await durable ({io})");
        t.add(
            &wl,
            "p50 µs",
            o,
            r,
            Some(w),
            o / r,
            "≤ 0.6× rotortree",
            Some(o / r <= 0.6),
        );
        t.add(
            &wl,
            "p50 µs vs raw",
            o,
            r,
            Some(w),
            o / w,
            "≤ 1.3× raw",
            Some(o / w <= 1.3),
        );
        if let Some(f) = &floor {
            // No target: how far the whole insert path is above the disk's
            // own cost of one durable write.
            let fl = p(f, 0.5);
            t.add(
                &wl,
                "p50 µs vs floor (direct write + fdatasync)",
                o,
                r,
                Some(fl),
                o / fl,
                "",
                None,
            );
        }
        let (o99, r99) = (p(&ours, 0.99), p(&theirs, 0.99));
        t.add(
            &wl,
            "p99 µs",
            o99,
            r99,
            Some(p(&raw, 0.99)),
            o99 / r99,
            "",
            None,
        );
        if one.is_empty() {
            one.push(("raw pwrite + fdatasync".into(), raw));
            if let Some(f) = floor {
                one.push(("direct write + fdatasync (floor)".into(), f));
            }
            one.push(("rotortree insert_durable".into(), theirs));
        }
        one.push((format!("ringtree ({io})"), ours));
    }

    println!("== 1000 tasks insert + await for {secs} s; rotortree 64 threads, Interval(1ms)");
    let (r_rate, r_h) = tree_latency::rotortree_threads(&base, secs, Duration::from_millis(1));
    many.push(("rotortree 64 threads, Interval(1ms)".into(), r_h.clone()));
    for &io in &ios {
        let (o_rate, o_h) = tree_latency::many_tasks(&rt, &base, io, secs);
        let wl = format!("1000 tasks insert + await ({io})");
        let x = o_rate / r_rate;
        t.add(
            &wl,
            "durable inserts/s",
            o_rate,
            r_rate,
            None,
            x,
            "≥ 10×",
            Some(x >= 10.0),
        );
        let (o99, r99) = (p(&o_h, 0.99), p(&r_h, 0.99));
        t.add(
            &wl,
            "p99 µs",
            o99,
            r99,
            None,
            o99 / r99,
            "< 1×",
            Some(o99 < r99),
        );
        t.add(
            &wl,
            "p50 µs",
            p(&o_h, 0.5),
            p(&r_h, 0.5),
            None,
            p(&o_h, 0.5) / p(&r_h, 0.5),
            "",
            None,
        );
        many.push((format!("ringtree 1000 tasks ({io})"), o_h));
    }

    println!("== fire-and-forget single inserts x1M, then flush");
    for &io in &ios {
        let (o, r, bytes) = tree_latency::fire_and_forget(&rt, &base, io, 1_000_000);
        let wl = format!("fire-and-forget x1M ({io})");
        t.add(
            &wl,
            "inserts/s",
            o,
            r,
            None,
            o / r,
            "≥ 4×",
            Some(o / r >= 4.0),
        );
        // A single insert's record is 48 bytes; each group commit adds a
        // 24-byte commit frame, shared by the group.
        t.add(
            &wl,
            "WAL bytes/insert (48 B record + share of commit frames)",
            bytes,
            56.0,
            None,
            bytes / 56.0,
            "≤ 48 B record",
            Some(bytes < 48.5),
        );
    }

    println!("== insert_many 10k + await, x100");
    for &io in &ios {
        let ((o_rate, o_h), theirs) = tree_latency::batches(&rt, &base, io);
        let (_, r_rate, r_h) = &theirs[0];
        let wl = format!("insert_many 10k + await x100 ({io})");
        let x = o_rate / r_rate;
        t.add(
            &wl,
            "leaves/s",
            o_rate,
            *r_rate,
            None,
            x,
            "≥ 5×",
            Some(x >= 5.0),
        );
        let c = p(&o_h, 0.5) / p(r_h, 0.5);
        t.add(
            &wl,
            "chunk p50 µs",
            p(&o_h, 0.5),
            p(r_h, 0.5),
            None,
            c,
            "≤ 0.25×",
            Some(c <= 0.25),
        );
    }

    println!("== checkpoint at {leaves} leaves (each system in a child process)");
    let ours = checkpoint_child("ours");
    let theirs = checkpoint_child("theirs");
    let ckpt_io = match std::env::var("RINGTREE_BENCH_IO").as_deref() {
        Ok("uring") => "io_uring",
        _ => "threaded",
    };
    let count = if leaves >= 1_000_000 {
        format!("{}M", leaves / 1_000_000)
    } else {
        format!("{}k", leaves / 1000)
    };
    let wl = format!("checkpoint, {count} leaves ({ckpt_io})");
    for ((label, o), (_, r)) in ours.iter().zip(&theirs) {
        let metric: &'static str = match label.as_str() {
            "load" => "load s",
            "checkpoint" => "checkpoint s",
            "writer worst" => "worst durable insert during it, ms",
            "reopen" => "reopen ms",
            "10k proofs after reopen" => "10k proofs after reopen, ms",
            "reopen verified" => "reopen with full verification, ms",
            "peak rss" => "peak RSS MB",
            _ => continue,
        };
        println!("{metric:40} ringtree {o:>10.2} rotortree {r:>10.2}");
        t.add(&wl, metric, *o, *r, None, o / r, "", None);
    }

    // On the last backend listed (io_uring by default).
    let io = *ios.last().expect("one backend");
    println!("== rewinds, history and durable reads at {leaves} leaves ({io}); rotortree has none");
    let f = rewind::run(&rt, &base, io, leaves, secs);
    for (depth, p50, runs) in &f.rewinds {
        let x = p50 / f.insert_p50;
        t.add(
            format!(
                "rewind {depth} of {count} checkpointed leaves, to durable ({io}, {runs} runs)"
            ),
            "p50 µs (raw: one durable insert, same tree)",
            *p50,
            f64::NAN,
            Some(f.insert_p50),
            x,
            "≤ 1.2× a durable insert",
            Some(x <= 1.2),
        );
    }
    let (proof, proof_at, update) = f.proof_ns;
    for (metric, v) in [
        ("proof_at ns (raw: proof)", proof_at),
        ("update_proof ns (raw: proof)", update),
    ] {
        t.add(
            format!("history at {count} leaves"),
            metric,
            v,
            f64::NAN,
            Some(proof),
            v / proof,
            "≤ 2× proof",
            Some(v / proof <= 2.0),
        );
    }
    let (alone, sized, with, reads) = f.load;
    t.add(
        format!("1000 tasks insert + await, durable_root() {reads:.0}/s ({io})"),
        "durable inserts/s (raw: a size() reader as often)",
        with,
        f64::NAN,
        Some(sized),
        with / sized,
        "no effect beyond noise",
        None,
    );
    t.add(
        format!("1000 tasks insert + await, durable_root() {reads:.0}/s ({io})"),
        "durable inserts/s (raw: no reader)",
        with,
        f64::NAN,
        Some(alone),
        with / alone,
        "",
        None,
    );

    let csv = out.join("results.csv");
    let md = out.join("results.md");
    let svg = out.join("latency_cdf.svg");
    std::fs::write(&csv, t.csv()).unwrap();
    std::fs::write(&md, t.markdown(&machine)).unwrap();
    draw(
        &svg,
        &[
            ("One task: insert + await durable", one),
            ("Concurrent writers: insert + await durable", many),
        ],
    )
    .unwrap();
    println!();
    print!("{}", t.markdown(&machine));
    println!();
    println!(
        "wrote {}, {} and {}",
        csv.display(),
        md.display(),
        svg.display()
    );
    let _ = std::fs::remove_dir_all(&base);
}
