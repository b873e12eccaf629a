//! Owns the bridge from raft-rs's `slog` records to `tracing` events (target `raft`), so the
//! Raft library's own log lines go where the rest of the daemon's do; never filters records
//! beyond the level map below.

use std::fmt::{self, Write as _};

use slog::{Drain, Level, Never, OwnedKVList, Record, Serializer, KV};

/// A `slog` drain that turns each record into a `tracing` event with target `raft`: the
/// message as the event's message and the key-values (the statement's, then the logger's)
/// as one `kv` field, `key=value` separated by spaces.
///
/// Levels move down one step, except for warnings and errors: raft-rs logs every vote,
/// election, term change and leader change at INFO (and much more at DEBUG), which for a
/// daemon is routine chatter, so at the default `info` filter it stays quiet. Raft's
/// CRITICAL and ERROR become ERROR, WARNING stays WARN, INFO becomes DEBUG, and DEBUG and
/// TRACE become TRACE; `shoald --log-level info,raft=debug` shows raft's INFO lines again.
///
/// (The `tracing-slog` crate does the conversion too, but keeps slog's levels and fixes the
/// target to `slog`, which is what this bridge is for changing.)
#[derive(Clone, Copy, Debug, Default)]
pub struct RaftLogDrain;

/// A root logger for raft-rs that logs through [`RaftLogDrain`].
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(RaftLogDrain, slog::o!())
}

impl Drain for RaftLogDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), Never> {
        // The key-values are formatted only for an event some subscriber wants.
        macro_rules! forward {
            ($level:expr) => {
                if tracing::enabled!(target: "raft", $level) {
                    let kv = key_values(record, values);
                    tracing::event!(target: "raft", $level, kv = %kv, "{}", record.msg());
                }
            };
        }
        match record.level() {
            Level::Critical | Level::Error => forward!(tracing::Level::ERROR),
            Level::Warning => forward!(tracing::Level::WARN),
            Level::Info => forward!(tracing::Level::DEBUG),
            Level::Debug | Level::Trace => forward!(tracing::Level::TRACE),
        }
        Ok(())
    }
}

/// The record's key-values, then its logger's, as `key=value key=value`.
fn key_values(record: &Record<'_>, values: &OwnedKVList) -> String {
    let mut line = KvLine(String::new());
    // Writing to a String cannot fail.
    let _ = record.kv().serialize(record, &mut line);
    let _ = values.serialize(record, &mut line);
    line.0
}

/// Collects key-values into one line.
struct KvLine(String);

impl Serializer for KvLine {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{key}={val}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Captures what a fmt subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged_at(filter: tracing::Level, log: impl FnOnce(&slog::Logger)) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(filter)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        let logger = raft_logger().new(slog::o!("raft_id" => 7));
        tracing::subscriber::with_default(subscriber, || log(&logger));
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn raft_info_is_debug_and_warnings_stay_warnings() {
        let out = logged_at(tracing::Level::TRACE, |l| {
            slog::info!(l, "became leader at term {}", 3; "term" => 3);
            slog::warn!(l, "stepped down");
        });
        assert!(out.contains("DEBUG raft: became leader at term 3 kv=term=3 raft_id=7"), "{out}");
        assert!(out.contains("WARN raft: stepped down kv=raft_id=7"), "{out}");
    }

    #[test]
    fn routine_raft_lines_are_quiet_at_the_default_filter() {
        let out = logged_at(tracing::Level::INFO, |l| {
            slog::info!(l, "became follower");
            slog::debug!(l, "sent a heartbeat");
            slog::error!(l, "the log is corrupt");
        });
        assert!(!out.contains("became follower") && !out.contains("heartbeat"), "{out}");
        assert!(out.contains("ERROR raft: the log is corrupt"), "{out}");
    }
}
