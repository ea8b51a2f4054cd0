//! A run's figures: the human summary and the `--json` line.

use serde_json::{Map, Value, json};

/// Latency percentiles in milliseconds, from microsecond samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) samples: usize,
}

impl Latency {
    pub(crate) fn of(mut us: Vec<u64>) -> Option<Self> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        // Nearest rank: the smallest sample with at least q of all samples at or below it.
        let at = |q: f64| {
            let rank = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len());
            ms(us[rank - 1])
        };
        Some(Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: ms(us[us.len() - 1]),
            samples: us.len(),
        })
    }

    pub(crate) fn json(this: Option<Self>) -> Value {
        match this {
            Some(l) => json!({"p50": l.p50, "p95": l.p95, "p99": l.p99, "max": l.max}),
            None => json!({"p50": null, "p95": null, "p99": null, "max": null}),
        }
    }
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) via: String,
    pub(crate) events: u64,
    pub(crate) deliveries: u64,
    pub(crate) seconds: f64,
    pub(crate) latency: Option<Latency>,
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) attempts_logged: u64,
    /// Requests the receiver got beyond the attempts the log holds for them.
    pub(crate) unlogged: u64,
    pub(crate) send_errors: u64,
    pub(crate) first_send_error: Option<String>,
    pub(crate) signatures_checked: u64,
    pub(crate) bad_signatures: u64,
    pub(crate) rss_mb: Value,
    /// CPU over the measured phases, per process group ([`super::cpu::Meter::json`]).
    pub(crate) cpu: Value,
    /// Scenario-specific figures, printed and added to the JSON line.
    pub(crate) extra: Map<String, Value>,
    /// Problems a scenario found beyond the counts above (e.g. validation not enforced).
    pub(crate) failures: Vec<String>,
}

impl Report {
    fn per_sec(&self, n: u64) -> f64 {
        if self.seconds > 0.0 {
            (n as f64 / self.seconds).round()
        } else {
            0.0
        }
    }

    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.lost > 0 {
            out.push(format!(
                "{} lost (not received, or not logged as delivered, within --timeout)",
                self.lost
            ));
        }
        if self.duplicates > 0 {
            out.push(format!("{} duplicated", self.duplicates));
        }
        if self.unlogged > 0 {
            out.push(format!("{} attempts not in the delivery log", self.unlogged));
        }
        if self.bad_signatures > 0 {
            out.push(format!("{} bad signatures", self.bad_signatures));
        }
        if self.send_errors > 0 {
            out.push(format!(
                "{} events not accepted (first: {})",
                self.send_errors,
                self.first_send_error.as_deref().unwrap_or("?")
            ));
        }
        out.extend(self.failures.iter().cloned());
        out
    }

    pub(crate) fn json(&self) -> Value {
        let mut v = json!({
            "scenario": self.scenario,
            "via": self.via,
            "events": self.events,
            "deliveries": self.deliveries,
            "seconds": round2(self.seconds),
            "events_per_sec": self.per_sec(self.events),
            "deliveries_per_sec": self.per_sec(self.deliveries),
            "latency_ms": Latency::json(self.latency),
            "lost": self.lost,
            "duplicates": self.duplicates,
            "attempts_logged": self.attempts_logged,
            "unlogged": self.unlogged,
            "send_errors": self.send_errors,
            "signatures_checked": self.signatures_checked,
            "bad_signatures": self.bad_signatures,
            "rss_mb": self.rss_mb,
            "cpu": self.cpu,
        });
        if let Value::Object(map) = &mut v {
            map.extend(self.extra.clone());
        }
        v
    }

    pub(crate) fn print(&self, json_line: bool) {
        println!("hookrelay bench {} (via {})", self.scenario, self.via);
        // The log scenario sends no events: its figures are its own table and the extras.
        // Republish sends none either: it counts events put on the stream.
        if self.scenario == "republish" {
            println!(
                "  events      {:>10}   {:>9.0}/s   over {:.2} s from ingest's start; lost {}",
                self.events,
                self.per_sec(self.events),
                self.seconds,
                self.lost
            );
        } else if self.scenario != "log" {
            println!(
                "  events      {:>10}   {:>9.0}/s",
                self.events,
                self.per_sec(self.events)
            );
            println!(
                "  deliveries  {:>10}   {:>9.0}/s   over {:.2} s",
                self.deliveries,
                self.per_sec(self.deliveries),
                self.seconds
            );
            if let Some(l) = self.latency {
                println!(
                    "  latency ms  p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  ({} samples)",
                    l.p50, l.p95, l.p99, l.max, l.samples
                );
            }
            println!(
                "  checked     lost {}  duplicates {}  attempts logged {}  unlogged {}  signatures {} checked, {} bad",
                self.lost,
                self.duplicates,
                self.attempts_logged,
                self.unlogged,
                self.signatures_checked,
                self.bad_signatures
            );
        }
        if let Value::Object(rss) = &self.rss_mb {
            let parts: Vec<String> = rss.iter().map(|(k, v)| format!("{k} {v} MB")).collect();
            println!("  peak RSS    {}", parts.join(", "));
        }
        if let Some(ms) = self.cpu["ms"].as_object() {
            let parts: Vec<String> = ms
                .iter()
                .map(|(k, v)| {
                    match (
                        self.cpu["ms_per_delivery"][k].as_f64(),
                        self.cpu["ms_per_event"][k].as_f64(),
                    ) {
                        (Some(per), _) => format!("{k} {v} ({per:.3}/delivery)"),
                        (None, Some(per)) => format!("{k} {v} ({per:.3}/event)"),
                        (None, None) => format!("{k} {v}"),
                    }
                })
                .collect();
            println!(
                "  cpu ms      {}   over {} measured phase(s), {} deliveries",
                parts.join(", "),
                self.cpu["phases"],
                self.cpu["deliveries"]
            );
            if let Some(counted) = self.cpu["counted"].as_object() {
                for (k, v) in counted {
                    println!("              {k}: {}", v.as_str().unwrap_or_default());
                }
            }
        }
        // A nested table (the log's shapes) is printed by its scenario, and is in the JSON.
        for (k, v) in self.extra.iter().filter(|(k, _)| k.as_str() != "shapes") {
            println!("  {k:<11} {v}");
        }
        let problems = self.problems();
        if problems.is_empty() {
            println!("  result      ok");
        } else {
            println!("  result      FAILED: {}", problems.join("; "));
        }
        if json_line {
            println!("{}", self.json());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let l = Latency::of((1..=100).map(|ms| ms * 1000).collect()).unwrap();
        assert_eq!((l.p50, l.p95, l.p99, l.max), (50.0, 95.0, 99.0, 100.0));
        let one = Latency::of(vec![1500]).unwrap();
        assert_eq!((one.p50, one.p99), (1.5, 1.5));
        assert!(Latency::of(Vec::new()).is_none());
    }

    #[test]
    fn a_run_with_anything_lost_or_duplicated_is_a_failure() {
        let ok = Report::default();
        assert!(ok.problems().is_empty());
        let bad = Report {
            lost: 2,
            duplicates: 1,
            ..Report::default()
        };
        let problems = bad.problems();
        assert!(problems[0].starts_with("2 lost"), "{problems:?}");
        assert_eq!(problems[1], "1 duplicated");
    }
}
