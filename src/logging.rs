//! The log writer: lines are appended to an in-memory buffer and written out in batches.
//!
//! One access line per request is the gateway's largest source of small writes. Writing each
//! line from the request thread costs a system call per request; handing each line to a writer
//! thread through a channel (what `tracing-appender` does) costs a thread wake-up and two
//! context switches per request instead. [`BatchWriter`] does what nginx's
//! `access_log … buffer= flush=` does: request threads append the formatted line to a shared
//! buffer, and a flusher thread writes the buffer out every [`FLUSH_EVERY`], or as soon as it
//! holds [`FLUSH_AT`] bytes.
//!
//! Nothing is dropped: a request thread that finds the buffer at [`HARD_LIMIT`] (the output is
//! slower than the traffic) writes it out itself, so requests slow down rather than lines
//! vanish. The buffer is flushed when the [`FlushGuard`] is dropped (normal exit, including
//! after a drained shutdown). What a crash or `SIGKILL` can lose is at most the last
//! [`FLUSH_EVERY`] of lines.
//!
//! Every event is formatted whole and appended with one `write_all` under the lock, so lines
//! from different threads never interleave.
//!
//! [`TextFormat`] is the text line format: `2026-11-28T07:59:00.123456Z  INFO target: message
//! field=value …`, like `tracing_subscriber`'s default without colours, written with less
//! machinery (one access line per request is on the hot path). Values are quoted and escaped
//! whenever they hold anything but plain visible characters, so no value can forge a line.

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full wakes the flusher early.
pub const FLUSH_AT: usize = 64 * 1024;
/// A buffer this full is written out by the thread that finds it so.
pub const HARD_LIMIT: usize = 4 * 1024 * 1024;

struct State {
    buf: Vec<u8>,
    closed: bool,
}

struct Shared<W> {
    state: Mutex<State>,
    wake: Condvar,
    /// The output, locked apart from the buffer so appends go on while a batch is written.
    out: Mutex<W>,
}

impl<W: Write> Shared<W> {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what is buffered and writes it out. Holding `out` while taking keeps batches in
    /// order.
    fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let batch = std::mem::take(&mut self.state().buf);
        if !batch.is_empty() {
            // Nowhere to report a failing log output; the lines are gone either way.
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
    }
}

/// A `tracing_subscriber` writer that batches lines; see the module documentation.
pub struct BatchWriter<W> {
    shared: Arc<Shared<W>>,
}

impl<W> Clone for BatchWriter<W> {
    fn clone(&self) -> Self {
        BatchWriter {
            shared: self.shared.clone(),
        }
    }
}

/// Flushes what is buffered and stops the flusher when dropped.
pub struct FlushGuard<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
    flusher: Option<JoinHandle<()>>,
}

impl<W: Write + Send + 'static> BatchWriter<W> {
    /// A writer over `out`, and the guard that must live as long as logging does.
    pub fn new(out: W) -> (Self, FlushGuard<W>) {
        Self::with_interval(out, FLUSH_EVERY)
    }

    /// [`new`](Self::new) with another flush interval (tests).
    pub fn with_interval(out: W, every: Duration) -> (Self, FlushGuard<W>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(FLUSH_AT),
                closed: false,
            }),
            wake: Condvar::new(),
            out: Mutex::new(out),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("scopegate-log".into())
                .spawn(move || loop {
                    let state = shared.state();
                    let (state, _) = shared
                        .wake
                        .wait_timeout_while(state, every, |s| !s.closed && s.buf.len() < FLUSH_AT)
                        .unwrap_or_else(|p| p.into_inner());
                    let closed = state.closed;
                    drop(state);
                    shared.flush();
                    if closed {
                        return;
                    }
                })
                .expect("starting the log flusher thread")
        };
        (
            BatchWriter {
                shared: shared.clone(),
            },
            FlushGuard {
                shared,
                flusher: Some(flusher),
            },
        )
    }
}

impl<W: Write + Send> Write for &BatchWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.state();
        let before = state.buf.len();
        state.buf.extend_from_slice(bytes);
        let len = state.buf.len();
        drop(state);
        if len >= HARD_LIMIT {
            self.shared.flush();
        } else if before < FLUSH_AT && len >= FLUSH_AT {
            self.shared.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + Send + 'static> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter<W> {
    type Writer = &'a BatchWriter<W>;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl<W: Write + Send + 'static> Drop for FlushGuard<W> {
    fn drop(&mut self) {
        self.shared.state().closed = true;
        self.shared.wake.notify_one();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        // Lines logged after the flusher's last round.
        self.shared.flush();
    }
}

/// The text log line; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFormat;

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_timestamp(&mut writer, SystemTime::now())?;
        let meta = event.metadata();
        write!(writer, " {:>5} {}:", meta.level(), meta.target())?;
        let mut fields = Fields {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// RFC 3339 in UTC with microseconds, as `tracing_subscriber` writes it.
fn write_timestamp(w: &mut impl fmt::Write, at: SystemTime) -> fmt::Result {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    write!(
        w,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes ` message key=value …`.
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            self.out.write_char(' ')?;
            if field.name() != "message" {
                self.out.write_str(field.name())?;
                self.out.write_char('=')?;
            }
            value(self.out)
        })();
    }
}

/// Plain visible ASCII that cannot be mistaken for a separator or a quote.
fn is_bare(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\')
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let message = field.name() == "message";
        self.put(field, |w| {
            if is_bare(value) || (message && !value.chars().any(char::is_control)) {
                w.write_str(value)
            } else {
                write!(w, "{value:?}")
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let message = field.name() == "message";
        self.put(field, |w| {
            // Formatted once; written bare when that is safe, escaped otherwise.
            let text = format!("{value:?}");
            if is_bare(&text) || (message && !text.chars().any(char::is_control)) {
                w.write_str(&text)
            } else {
                write!(w, "{text:?}")
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read while the writer owns it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn lines_wait_for_the_interval_then_appear() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::with_interval(sink.clone(), Duration::from_millis(50));
        (&writer).write_all(b"one\n").unwrap();
        assert_eq!(sink.text(), "", "buffered, not written per line");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.text(), "one\n");
        drop(guard);
    }

    #[test]
    fn a_full_buffer_is_written_without_waiting_for_the_interval() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::with_interval(sink.clone(), Duration::from_secs(3600));
        let line = vec![b'x'; 1023];
        for _ in 0..(FLUSH_AT / 1024 + 1) {
            (&writer).write_all(&line).unwrap();
            (&writer).write_all(b"\n").unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().len() < FLUSH_AT && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sink.text().len() >= FLUSH_AT);
        drop(guard);
    }

    #[test]
    fn dropping_the_guard_writes_everything_in_order_from_every_thread() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::with_interval(sink.clone(), Duration::from_secs(3600));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        (&writer)
                            .write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = sink.text();
        assert_eq!(text.lines().count(), 8000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..2000).collect::<Vec<_>>(), "thread {t}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut out = String::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_795_852_740_123_456);
        write_timestamp(&mut out, at).unwrap();
        assert_eq!(out, "2026-11-28T07:59:00.123456Z");
        let mut out = String::new();
        write_timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400)).unwrap();
        assert_eq!(out, "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn lines_carry_fields_and_values_cannot_forge_a_line() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::with_interval(sink.clone(), Duration::from_secs(3600));
        let subscriber = tracing_subscriber::fmt()
            .event_format(TextFormat)
            .with_writer(writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "scopegate::access",
                method = "GET",
                route = "/v1/{id}",
                status = 200u16,
                reason = "a b\nforged=1",
                "request"
            );
            tracing::warn!(error = ?"x y", "upstream failed");
        });
        drop(guard);
        let text = sink.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with(
                " INFO scopegate::access: request method=GET route=/v1/{id} status=200 reason=\"a b\\nforged=1\""
            ),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains(" WARN "), "{}", lines[1]);
        assert!(
            lines[1].ends_with(": upstream failed error=\"\\\"x y\\\"\""),
            "{}",
            lines[1]
        );
    }
}
