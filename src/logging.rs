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

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

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
}
