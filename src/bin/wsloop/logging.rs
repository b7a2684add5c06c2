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
            let line = json_line(&buf.timestamp_micros().to_string(), record);
            writeln!(buf, "{line}")
        });
    }
    b.init();
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
