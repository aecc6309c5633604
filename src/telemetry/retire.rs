//! Dropping an access log waits for its writer to flush, and dropping the
//! exporter for its last batch: seconds, with a stuck disk or collector.
//! Their last holder after a reload may be a worker, whose requests must not
//! wait, so such a value is dropped on a thread of its own instead; `stop`
//! takes them back (`into_inner`) to flush them before it returns.

use std::ops::Deref;
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

pub struct OffThread<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> OffThread<T> {
    pub fn new(value: T) -> Self {
        OffThread(Some(value))
    }

    /// The value, for the caller to drop (and wait for) itself.
    pub fn into_inner(mut self) -> Option<T> {
        self.0.take()
    }
}

impl<T: Send + 'static> Deref for OffThread<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // Some from `new` until `into_inner` or drop, which consume it.
        self.0
            .as_ref()
            .expect("an OffThread holds its value until dropped")
    }
}

impl<T: Send + 'static> Drop for OffThread<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            // No retiring thread (it could not start): dropped here after all.
            let _ = retirer().send(Box::new(value));
        }
    }
}

fn retirer() -> &'static Sender<Box<dyn Send>> {
    static RETIRER: OnceLock<Sender<Box<dyn Send>>> = OnceLock::new();
    RETIRER.get_or_init(|| {
        let (retire, retired) = channel::<Box<dyn Send>>();
        let _ = std::thread::Builder::new()
            .name("meshcore-retire".into())
            .spawn(move || retired.into_iter().for_each(drop));
        retire
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    struct Slow(std::sync::mpsc::SyncSender<std::thread::ThreadId>);

    impl Drop for Slow {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }

    #[test]
    fn a_dropped_value_is_dropped_on_another_thread_and_into_inner_keeps_it_here() {
        let (told, dropped_on) = sync_channel(2);
        drop(OffThread::new(Slow(told.clone())));
        let there = dropped_on.recv_timeout(Duration::from_secs(10)).expect("dropped");
        assert_ne!(there, std::thread::current().id());
        drop(OffThread::new(Slow(told)).into_inner());
        let here = dropped_on.recv_timeout(Duration::from_secs(10)).expect("dropped");
        assert_eq!(here, std::thread::current().id());
    }
}
