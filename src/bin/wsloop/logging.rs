//! Log output: env_logger's text lines (the default), or one JSON object a line for log
//! shippers, with the record's key-value fields (log's `kv`) as members of their own.
//! The level comes from RUST_LOG either way (default info).

use super::args::LogFormat;
use log::kv::{self, Key, Value, VisitSource};
use std::fmt::Write as _;
use std::io::Write as _;

pub fn init(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            let line = json_line(&rfc3339_now(), record);
            writeln!(buf, "{line}")
        });
    } else {
        b.format(|buf, record| {
            writeln!(buf, "[{} {:<5} {}] {}", rfc3339_now(), record.level(), record.target(), record.args())
        });
    }
    b.init();
}

/// The time now as RFC 3339 in UTC with microseconds (`2026-12-01T23:52:14.123456Z`).
/// Written here rather than through env_logger's `humantime` feature, whose date crate
/// (jiff) costs about 200 KB of the binary for this one line.
fn rfc3339_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_micros())
}

fn rfc3339(secs: u64, micros: u32) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `{"time":..,"level":..,"target":..,"message":..,<fields>}` without the newline.
fn json_line(time: &str, record: &log::Record<'_>) -> String {
    let mut o = String::with_capacity(160);
    o.push_str("{\"time\":");
    push_str(&mut o, time);
    o.push_str(",\"level\":");
    push_str(&mut o, record.level().as_str());
    o.push_str(",\"target\":");
    push_str(&mut o, record.target());
    o.push_str(",\"message\":");
    push_str(&mut o, &record.args().to_string());
    let _ = record.key_values().visit(&mut Fields(&mut o));
    o.push('}');
    o
}

struct Fields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let o = &mut *self.0;
        o.push(',');
        push_str(o, key.as_str());
        o.push(':');
        if let Some(n) = value.to_u64() {
            let _ = write!(o, "{n}");
        } else if let Some(n) = value.to_i64() {
            let _ = write!(o, "{n}");
        } else if let Some(b) = value.to_bool() {
            let _ = write!(o, "{b}");
        } else {
            push_str(o, &value.to_string());
        }
        Ok(())
    }
}

/// `s` as a JSON string (RFC 8259 section 7).
fn push_str(o: &mut String, s: &str) {
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(super::rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(super::rfc3339(1_796_168_734, 123_456), "2026-12-01T23:45:34.123456Z");
    }

    use super::*;

    #[test]
    fn a_record_with_fields_is_one_json_object() {
        let peer = "10.0.0.7:5123";
        let kvs: [(&str, Value<'_>); 3] =
            [("peer", Value::from_display(&peer)), ("code", Value::from(1006u16)), ("clean", Value::from(false))];
        let args = format_args!("closing \"x\"\n\tdone\u{1}");
        let record =
            log::Record::builder().level(log::Level::Warn).target("wsloop::server").args(args).key_values(&kvs).build();
        let line = json_line("2026-01-02T03:04:05.000006Z", &record);
        let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(v["time"], "2026-01-02T03:04:05.000006Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "wsloop::server");
        assert_eq!(v["message"], "closing \"x\"\n\tdone\u{1}");
        assert_eq!(v["peer"], "10.0.0.7:5123");
        assert_eq!(v["code"], 1006);
        assert_eq!(v["clean"], false);
        assert!(!line.contains('\n'));
    }
}
