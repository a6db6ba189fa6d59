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
//!
//! The access line (one per request) skips the `tracing` dispatch when [`install_access_log`]
//! was called (`main` does): [`access`] checks the filter with the same callsite metadata the
//! event has, then formats the line straight into the batch buffer, byte for byte what
//! [`TextFormat`] or `tracing_subscriber`'s JSON format would write for the event. Without an
//! installed sink (tests, embedders) it is a plain `tracing` event.

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
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
    out: Mutex<Out<W>>,
}

struct Out<W> {
    w: W,
    /// The last batch's buffer, emptied: swapped in for the next batch so appends do not
    /// grow a fresh buffer from nothing after every flush.
    spare: Vec<u8>,
}

impl<W: Write> Shared<W> {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what is buffered and writes it out. Holding `out` while taking keeps batches in
    /// order.
    fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let out = &mut *out;
        let mut batch = {
            let mut state = self.state();
            if state.buf.is_empty() {
                return;
            }
            std::mem::replace(&mut state.buf, std::mem::take(&mut out.spare))
        };
        // Nowhere to report a failing log output; the lines are gone either way.
        let _ = out.w.write_all(&batch);
        let _ = out.w.flush();
        // A buffer that grew far past the usual batch (a slow output) is not kept.
        if batch.capacity() <= 2 * FLUSH_AT {
            batch.clear();
            out.spare = batch;
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
            out: Mutex::new(Out {
                w: out,
                spare: Vec::with_capacity(FLUSH_AT),
            }),
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

impl<W: Write + Send> BatchWriter<W> {
    /// Lets `add` append to the buffer (under its lock, so lines never interleave), then wakes
    /// the flusher or flushes as a `write` would.
    fn append_with(&self, add: impl FnOnce(&mut Vec<u8>)) {
        let mut state = self.shared.state();
        let before = state.buf.len();
        add(&mut state.buf);
        let len = state.buf.len();
        drop(state);
        if len >= HARD_LIMIT {
            self.shared.flush();
        } else if before < FLUSH_AT && len >= FLUSH_AT {
            self.shared.wake.notify_one();
        }
    }
}

impl<W: Write + Send> Write for &BatchWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.append_with(|buf| buf.extend_from_slice(bytes));
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
        let mut stamp = Vec::with_capacity(TIMESTAMP_LEN);
        push_timestamp(&mut stamp, SystemTime::now(), false);
        writer.write_str(std::str::from_utf8(&stamp).map_err(|_| fmt::Error)?)?;
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

/// The length of a [`push_timestamp`] timestamp (years 0–9999).
const TIMESTAMP_LEN: usize = 27;

/// RFC 3339 in UTC with microseconds, as `tracing_subscriber` writes it
/// (`2026-11-28T07:59:00.123456Z`), digit by digit rather than through `core::fmt`. A year past
/// 9999 is written in full, with a `+` when `plus` (`tracing_subscriber`'s JSON timestamps).
fn push_timestamp(buf: &mut Vec<u8>, at: SystemTime, plus: bool) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    // Up to the seconds, a timestamp changes once a second: kept per thread.
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
    }
    let (cached, head) = SECOND.get();
    if cached == secs {
        buf.extend_from_slice(&head);
        push_digits(buf, since.subsec_micros(), 6);
        buf.push(b'Z');
        return;
    }
    let start = buf.len();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = (secs % 86_400) as u32;
    if year > 9999 {
        if plus {
            buf.push(b'+');
        }
        push_u64(buf, year as u64);
    } else {
        // From 1970 (times before the epoch count as the epoch).
        push_digits(buf, year as u32, 4);
    }
    buf.push(b'-');
    push_digits(buf, month, 2);
    buf.push(b'-');
    push_digits(buf, day, 2);
    buf.push(b'T');
    push_digits(buf, rem / 3600, 2);
    buf.push(b':');
    push_digits(buf, rem / 60 % 60, 2);
    buf.push(b':');
    push_digits(buf, rem % 60, 2);
    buf.push(b'.');
    // Years past 9999 are longer, and not kept.
    if let Ok(head) = <[u8; 20]>::try_from(&buf[start..]) {
        SECOND.set((secs, head));
    }
    push_digits(buf, since.subsec_micros(), 6);
    buf.push(b'Z');
}

/// `n` in exactly `width` decimal digits (`n < 10^width`).
fn push_digits(buf: &mut Vec<u8>, mut n: u32, width: usize) {
    let mut digits = [b'0'; 6];
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&digits[..width]);
}

/// `n` in decimal, as `Display` writes it.
fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
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

/// The fields of the access line `pipeline::handle` writes once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub decision: &'a str,
    pub reason: Option<&'a str>,
    pub key: Option<&'a str>,
    pub org: Option<&'a str>,
    pub micros: u64,
}

/// The target of access lines (`SCOPEGATE_LOG=scopegate::access=off` turns them off).
pub const ACCESS_TARGET: &str = "scopegate::access";

/// Which line format an installed access log writes: the installed subscriber's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// [`TextFormat`].
    Text,
    /// `tracing_subscriber::fmt().json()` with its defaults.
    Json,
}

/// Where [`access`] appends lines when installed.
trait Append: Send + Sync {
    fn append(&self, add: &mut dyn FnMut(&mut Vec<u8>));
}

impl<W: Write + Send + 'static> Append for BatchWriter<W> {
    fn append(&self, add: &mut dyn FnMut(&mut Vec<u8>)) {
        self.append_with(add);
    }
}

/// An access log writing into a [`BatchWriter`] without the `tracing` dispatch.
pub struct AccessLog {
    out: Box<dyn Append>,
    format: LineFormat,
}

impl AccessLog {
    /// Access lines in `format` into `writer`, which must be the writer of the `tracing`
    /// subscriber whose format is `format` (so that lines land in one stream, in order).
    pub fn new<W: Write + Send + 'static>(writer: &BatchWriter<W>, format: LineFormat) -> Self {
        AccessLog {
            out: Box::new(writer.clone()),
            format,
        }
    }

    /// Writes the line if the current subscriber's filter enables the access event.
    pub fn log(&self, line: &Access<'_>) {
        if !access_enabled() {
            return;
        }
        // Logged as the answer is ready, when the request took its latest reading.
        let now = crate::clock::latest().wall;
        self.out.append(&mut |buf| match self.format {
            LineFormat::Text => line.push_text(buf, now),
            LineFormat::Json => line.push_json(buf, now),
        });
    }
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// Sends every later [`access`] line to `log` instead of through `tracing`. Once per process;
/// `false` when a log was installed already.
pub fn install_access_log(log: AccessLog) -> bool {
    ACCESS_LOG.set(log).is_ok()
}

/// Whether the current subscriber takes the access event: asked with the event's own target,
/// level, kind and field names, so every `SCOPEGATE_LOG` directive (target, level, field names)
/// applies as it does to the event.
fn access_enabled() -> bool {
    tracing::enabled!(
        kind: tracing::metadata::Kind::EVENT,
        target: ACCESS_TARGET,
        tracing::Level::INFO,
        message,
        method,
        route,
        status,
        decision,
        reason,
        key,
        org,
        micros
    )
}

/// Logs one access line: into the installed [`AccessLog`], or as a `tracing` event.
pub fn access(line: &Access<'_>) {
    match ACCESS_LOG.get() {
        Some(log) => log.log(line),
        None => line.emit(),
    }
}

impl Access<'_> {
    /// The line as a `tracing` event (what [`Access::push_text`] and [`Access::push_json`]
    /// reproduce).
    pub fn emit(&self) {
        tracing::info!(
            target: "scopegate::access",
            method = self.method,
            route = self.route,
            status = self.status,
            decision = self.decision,
            reason = self.reason,
            key = self.key,
            org = self.org,
            micros = self.micros,
            "request"
        );
    }

    /// What [`TextFormat`] writes for [`Access::emit`]'s event at `now`.
    fn push_text(&self, buf: &mut Vec<u8>, now: SystemTime) {
        push_timestamp(buf, now, false);
        buf.extend_from_slice(b"  INFO scopegate::access: request method=");
        push_text_value(buf, self.method);
        buf.extend_from_slice(b" route=");
        push_text_value(buf, self.route);
        buf.extend_from_slice(b" status=");
        push_u64(buf, self.status.into());
        buf.extend_from_slice(b" decision=");
        push_text_value(buf, self.decision);
        for (name, value) in [
            (&b" reason="[..], self.reason),
            (b" key=", self.key),
            (b" org=", self.org),
        ] {
            if let Some(value) = value {
                buf.extend_from_slice(name);
                push_text_value(buf, value);
            }
        }
        buf.extend_from_slice(b" micros=");
        push_u64(buf, self.micros);
        buf.push(b'\n');
    }

    /// What `tracing_subscriber`'s default JSON format writes for [`Access::emit`]'s event at
    /// `now` (fields in the event's order, absent options left out).
    fn push_json(&self, buf: &mut Vec<u8>, now: SystemTime) {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        push_timestamp(buf, now, true);
        buf.extend_from_slice(
            b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"method\":",
        );
        push_json_str(buf, self.method);
        buf.extend_from_slice(b",\"route\":");
        push_json_str(buf, self.route);
        buf.extend_from_slice(b",\"status\":");
        push_u64(buf, self.status.into());
        buf.extend_from_slice(b",\"decision\":");
        push_json_str(buf, self.decision);
        for (name, value) in [
            (&b",\"reason\":"[..], self.reason),
            (b",\"key\":", self.key),
            (b",\"org\":", self.org),
        ] {
            if let Some(value) = value {
                buf.extend_from_slice(name);
                push_json_str(buf, value);
            }
        }
        buf.extend_from_slice(b",\"micros\":");
        push_u64(buf, self.micros);
        buf.extend_from_slice(b"},\"target\":\"scopegate::access\"}\n");
    }
}

/// A field value as [`Fields::record_str`] writes it (not the message).
fn push_text_value(buf: &mut Vec<u8>, value: &str) {
    if is_bare(value) {
        buf.extend_from_slice(value.as_bytes());
    } else {
        let _ = write!(buf, "{value:?}");
    }
}

/// A JSON string, escaped by serde_json as the JSON format's serializer escapes it.
fn push_json_str(buf: &mut Vec<u8>, value: &str) {
    let _ = serde_json::to_writer(&mut *buf, value);
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
    // Every byte tested, without an early exit, so the loop vectorizes.
    !s.is_empty()
        && s.bytes().fold(true, |bare, b| {
            bare & b.is_ascii_graphic() & (b != b'"') & (b != b'=') & (b != b'\\')
        })
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
        let stamp = |at: SystemTime, plus: bool| {
            let mut out = Vec::new();
            push_timestamp(&mut out, at, plus);
            String::from_utf8(out).unwrap()
        };
        let at = UNIX_EPOCH + Duration::from_micros(1_795_852_740_123_456);
        assert_eq!(stamp(at, false), "2026-11-28T07:59:00.123456Z");
        // The same second again (the cached head), then another microsecond.
        assert_eq!(stamp(at, true), "2026-11-28T07:59:00.123456Z");
        let later = at + Duration::from_micros(7);
        assert_eq!(stamp(later, false), "2026-11-28T07:59:00.123463Z");
        let at = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(stamp(at, false), "2000-02-29T00:00:00.000000Z");
        assert_eq!(stamp(UNIX_EPOCH, false), "1970-01-01T00:00:00.000000Z");
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(stamp(before, false), "1970-01-01T00:00:00.000000Z");
        // Past 9999: the year in full, with tracing_subscriber's `+` for JSON lines.
        let far = UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert_eq!(stamp(far, false), "10000-01-01T00:00:00.000000Z");
        assert_eq!(stamp(far, true), "+10000-01-01T00:00:00.000000Z");
        assert_eq!(stamp(far, false), "10000-01-01T00:00:00.000000Z");
    }

    #[test]
    fn timestamps_match_the_formatted_reference() {
        // The fmt-based timestamp this module wrote before, over a spread of instants.
        fn reference(at: SystemTime) -> String {
            let since = at.duration_since(UNIX_EPOCH).unwrap();
            let secs = since.as_secs();
            let (year, month, day) = civil_from_days((secs / 86_400) as i64);
            let rem = secs % 86_400;
            format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
                rem / 3600,
                rem / 60 % 60,
                rem % 60,
                since.subsec_micros()
            )
        }
        let mut micros: u64 = 1;
        while micros < 250_000_000_000_000_000 {
            for at in [micros, micros + 999_999, micros * 7 + 13] {
                let at = UNIX_EPOCH + Duration::from_micros(at);
                let mut out = Vec::new();
                push_timestamp(&mut out, at, false);
                assert_eq!(String::from_utf8(out).unwrap(), reference(at));
            }
            micros = micros * 3 + 1;
        }
    }

    #[test]
    fn numbers_are_written_as_display_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 200, 404, 65_535, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    /// Access lines with every field shape: all present, all absent, values that must be
    /// quoted or escaped (spaces, quotes, `=`, backslashes, control characters, non-ASCII).
    fn access_lines() -> Vec<Access<'static>> {
        let base = Access {
            method: "GET",
            route: "/v1/state",
            status: 200,
            decision: "allow",
            reason: None,
            key: Some("sbk_ac854c270c0f0c8c5087503f"),
            org: Some("org_a6563da1f220c9ffc404c9ef"),
            micros: 212,
        };
        vec![
            base,
            Access {
                method: "OTHER",
                route: "(none)",
                status: 404,
                decision: "reject",
                reason: Some("not-found"),
                key: None,
                org: None,
                micros: 0,
            },
            Access {
                status: 401,
                decision: "deny",
                reason: Some("bad-signature"),
                key: None,
                org: None,
                micros: u64::MAX,
                ..base
            },
            Access {
                route: "/v1/{id}/files/{*rest}",
                status: 502,
                decision: "upstream-error",
                reason: Some("a b\nforged=1 \"q\" \\ \t\u{7f}\u{1b}[31m"),
                key: Some("k=v"),
                org: Some("ørg ünïcode \u{2028}"),
                micros: 1_234_567,
                ..base
            },
            Access {
                route: "",
                reason: Some(""),
                ..base
            },
        ]
    }

    /// Runs `log` under a subscriber with `filter` and format `json`, writing to a sink;
    /// returns the sink's lines.
    fn lines_under(filter: &str, json: bool, log: impl FnOnce(&BatchWriter<Sink>)) -> Vec<String> {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::with_interval(sink.clone(), Duration::from_secs(3600));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(writer.clone());
        if json {
            let subscriber = builder.json().finish();
            tracing::subscriber::with_default(subscriber, || log(&writer));
        } else {
            let subscriber = builder.with_ansi(false).event_format(TextFormat).finish();
            tracing::subscriber::with_default(subscriber, || log(&writer));
        }
        drop(guard);
        sink.text().lines().map(str::to_owned).collect()
    }

    /// A line without its timestamp (the two paths read the clock apart).
    fn untimed(line: &str, json: bool) -> String {
        let (before, after) = if json {
            line.split_at("{\"timestamp\":\"".len())
        } else {
            ("", line)
        };
        assert!(after.len() > TIMESTAMP_LEN, "{line}");
        let (stamp, rest) = after.split_at(TIMESTAMP_LEN);
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line}"
        );
        format!("{before}<time>{rest}")
    }

    #[test]
    fn access_lines_are_the_tracing_events_lines_byte_for_byte() {
        for json in [false, true] {
            let format = if json {
                LineFormat::Json
            } else {
                LineFormat::Text
            };
            for line in access_lines() {
                let traced = lines_under("info", json, |_| line.emit());
                let direct = lines_under("info", json, |w| AccessLog::new(w, format).log(&line));
                assert_eq!(traced.len(), 1, "{traced:?}");
                assert_eq!(direct.len(), 1, "{direct:?}");
                assert_eq!(untimed(&direct[0], json), untimed(&traced[0], json));
                // And without a subscriber's help: the same formatter, a fixed clock.
                let at = UNIX_EPOCH + Duration::from_micros(1_795_852_740_123_456);
                let mut out = Vec::new();
                if json {
                    line.push_json(&mut out, at);
                } else {
                    line.push_text(&mut out, at);
                }
                let out = String::from_utf8(out).unwrap();
                assert!(out.contains("2026-11-28T07:59:00.123456Z"), "{out}");
                assert_eq!(
                    untimed(out.trim_end_matches('\n'), json),
                    untimed(&traced[0], json)
                );
            }
        }
    }

    #[test]
    fn access_lines_are_json_objects_without_token_fields() {
        let line = access_lines()[3];
        let mut out = Vec::new();
        line.push_json(&mut out, SystemTime::now());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["fields"]["reason"], line.reason.unwrap());
        assert_eq!(v["fields"]["org"], line.org.unwrap());
        assert_eq!(v["fields"]["micros"], 1_234_567);
        assert_eq!(v["target"], ACCESS_TARGET);
        let fields = v["fields"].as_object().unwrap();
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        for name in names {
            assert!(
                [
                    "message", "method", "route", "status", "decision", "reason", "key", "org",
                    "micros"
                ]
                .contains(&name),
                "{name}"
            );
        }
    }

    #[test]
    fn the_filter_decides_as_it_does_for_the_event() {
        let line = access_lines()[0];
        for (filter, written) in [
            ("info", true),
            ("trace", true),
            ("warn", false),
            ("off", false),
            ("warn,scopegate=info", true),
            ("info,scopegate::access=warn", false),
            ("info,scopegate::access=off", false),
            ("warn,scopegate::access=info", true),
            ("warn,scopegate::acc=info", true),
            ("warn,other=info", false),
            // Field-name directives apply to events that have the field.
            ("warn,scopegate::access[{micros}]=info", true),
            ("warn,scopegate::access[{nonesuch}]=info", false),
            ("info,[{micros}]=warn", false),
        ] {
            for json in [false, true] {
                let format = if json {
                    LineFormat::Json
                } else {
                    LineFormat::Text
                };
                let traced = lines_under(filter, json, |_| line.emit());
                let direct = lines_under(filter, json, |w| AccessLog::new(w, format).log(&line));
                assert_eq!(traced.len(), usize::from(written), "{filter}: {traced:?}");
                assert_eq!(direct.len(), traced.len(), "{filter}: {direct:?}");
            }
        }
    }

    #[test]
    fn without_an_installed_log_access_is_a_tracing_event() {
        // Unit tests never install one: `access` goes through the current subscriber.
        let line = access_lines()[1];
        let traced = lines_under("info", false, |_| access(&line));
        assert_eq!(traced.len(), 1);
        assert!(
            traced[0].ends_with(
                " INFO scopegate::access: request method=OTHER route=(none) status=404 decision=reject reason=not-found micros=0"
            ),
            "{}",
            traced[0]
        );
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
