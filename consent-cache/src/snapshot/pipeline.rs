//! Parallel decoding of a stream of chunks into per-thread shard builders.

use super::LoadError;
use crate::segment::ShardBuilders;
use std::path::Path;
use std::sync::mpsc;

/// Chunks queued per worker: enough to keep it busy while the reader reads,
/// few enough to bound memory.
const QUEUE_DEPTH: usize = 2;

/// Feeds the chunks of `source` (read on the calling thread) round-robin to
/// `workers` threads running `decode`, and returns each thread's builders.
///
/// On failure the error of the earliest chunk wins, whoever saw it: every chunk
/// before a failing one has been handed out, and each worker decodes its queue
/// in order until its own first error, so earlier errors are always found.
pub(crate) fn run<C, S, D>(
    path: &Path,
    source: S,
    decode: &D,
    expected: usize,
    workers: usize,
) -> Result<Vec<ShardBuilders>, LoadError>
where
    C: Send,
    S: Iterator<Item = Result<C, LoadError>>,
    D: Fn(C, &mut ShardBuilders) -> Result<(), LoadError> + Sync,
{
    let workers = workers.max(1);
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<(usize, C)>(QUEUE_DEPTH);
            senders.push(tx);
            handles.push(scope.spawn(move || {
                let mut out = ShardBuilders::new(expected / workers);
                for (k, chunk) in rx {
                    decode(chunk, &mut out).map_err(|e| (k, e))?;
                }
                Ok::<_, (usize, LoadError)>(out)
            }));
        }
        let mut first_err: Option<(usize, LoadError)> = None;
        for (k, item) in source.enumerate() {
            match item {
                Ok(chunk) => {
                    // A closed queue means that worker failed; its error is collected below.
                    if senders[k % workers].send((k, chunk)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    first_err = Some((k, e));
                    break;
                }
            }
        }
        drop(senders);
        let mut parts = Vec::with_capacity(workers);
        for h in handles {
            match h.join() {
                Ok(Ok(builders)) => parts.push(builders),
                Ok(Err((k, e))) => {
                    if first_err.as_ref().is_none_or(|(first, _)| k < *first) {
                        first_err = Some((k, e));
                    }
                }
                Err(_) => {
                    return Err(LoadError::Internal {
                        path: path.to_owned(),
                    })
                }
            }
        }
        match first_err {
            Some((_, e)) => Err(e),
            None => Ok(parts),
        }
    })
}
