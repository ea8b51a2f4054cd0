//! Reading values from a service's `/metrics` (Prometheus text format).

use crate::Api;

/// A series as written in Prometheus text: a name and its labels, in any order.
#[derive(Debug, PartialEq)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
}

impl Series {
    /// Parses `name` or `name{label="value",…}`; `None` if the labels are malformed.
    fn parse(text: &str) -> Option<Self> {
        let Some((name, rest)) = text.split_once('{') else {
            return Some(Self {
                name: text.trim().to_owned(),
                labels: Vec::new(),
            });
        };
        let body = rest.strip_suffix('}')?;
        let mut labels = Vec::new();
        let mut chars = body.chars().peekable();
        loop {
            while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
            if chars.peek().is_none() {
                break;
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if chars.next() != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            labels.push((key.trim().to_owned(), value));
        }
        labels.sort();
        Some(Self {
            name: name.trim().to_owned(),
            labels,
        })
    }
}

/// Every sample in `text`: its series and value (comments and malformed lines skipped).
fn samples(text: &str) -> impl Iterator<Item = (Series, f64)> + '_ {
    text.lines().filter(|line| !line.starts_with('#')).filter_map(|line| {
        // The series ends at its closing brace, or at the first space when it has none;
        // a timestamp may follow the value.
        let end = match line.find('{') {
            Some(_) => line.rfind('}')? + 1,
            None => line.find(' ')?,
        };
        let (series, rest) = line.split_at(end);
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some((Series::parse(series)?, value))
    })
}

/// The value of `series` in `text`: a bare name (`hookrelay_x_total`) or a name with
/// labels (`hookrelay_x_total{table="events"}`), matching a sample with exactly those
/// labels in any order.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    let wanted = Series::parse(series)?;
    samples(text).find(|(s, _)| *s == wanted).map(|(_, v)| v)
}

/// The sum of every sample of metric `name` in `text`, whatever its labels (0 if none).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    samples(text).filter(|(s, _)| s.name == name).map(|(_, v)| v).sum()
}

impl Api {
    /// The text of `/metrics`; panics if the service does not answer it.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base);
        let resp = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        resp.text().await.unwrap_or_else(|e| panic!("reading GET {url}: {e}"))
    }

    /// [`metric_value`] of `series` in the service's `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics().await, series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE hookrelay_retention_removed_total counter
hookrelay_retention_removed_total{table=\"deliveries\"} 280
hookrelay_retention_removed_total{table=\"events\"} 281
hookrelay_events_stream_remade_total 1
hookrelay_consumer_pending_messages{stream=\"HOOKRELAY_DELIVERIES\",consumer=\"deliverer\"} 3 1700000000000
hookrelay_odd{note=\"a, \\\"b\\\"} c\"} 0.5
";

    #[test]
    fn a_series_is_found_by_name_and_labels_in_any_order() {
        assert_eq!(metric_value(TEXT, "hookrelay_events_stream_remade_total"), Some(1.0));
        assert_eq!(
            metric_value(TEXT, "hookrelay_retention_removed_total{table=\"events\"}"),
            Some(281.0)
        );
        assert_eq!(
            metric_value(
                TEXT,
                "hookrelay_consumer_pending_messages{consumer=\"deliverer\", stream=\"HOOKRELAY_DELIVERIES\"}"
            ),
            Some(3.0)
        );
        assert_eq!(metric_value(TEXT, "hookrelay_odd{note=\"a, \\\"b\\\"} c\"}"), Some(0.5));
    }

    #[test]
    fn a_series_needs_exactly_its_labels() {
        assert_eq!(metric_value(TEXT, "hookrelay_retention_removed_total"), None);
        assert_eq!(
            metric_value(TEXT, "hookrelay_retention_removed_total{table=\"attempts\"}"),
            None
        );
        assert_eq!(
            metric_value(TEXT, "hookrelay_consumer_pending_messages{consumer=\"deliverer\"}"),
            None
        );
    }

    #[test]
    fn a_sum_covers_every_label_set() {
        assert_eq!(metric_sum(TEXT, "hookrelay_retention_removed_total"), 561.0);
        assert_eq!(metric_sum(TEXT, "hookrelay_deliveries_repaired_total"), 0.0);
    }
}
