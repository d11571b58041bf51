//! How both ends of ShardKv's `Batch` stream turn concurrency into batching
//! without a timer: wait for one item, give the scheduler one turn so that
//! the items being produced right now (woken by the same event) queue too,
//! then take whatever has queued, up to a bound.

use tokio::sync::mpsc::UnboundedReceiver;

/// The next batch from `rx`: its next item and up to `max - 1` more that
/// have queued by the time the scheduler has had one turn. `None` once every
/// sender is gone and the queue is empty.
pub async fn next_batch<T>(rx: &mut UnboundedReceiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    tokio::task::yield_now().await;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn takes_what_queued_up_to_the_bound() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        assert_eq!(next_batch(&mut rx, 3).await, Some(vec![0, 1, 2]));
        // A producer woken at the same time gets its item into the batch.
        let late = tx.clone();
        tokio::spawn(async move { late.send(5).unwrap() });
        assert_eq!(next_batch(&mut rx, 10).await, Some(vec![3, 4, 5]));
        drop(tx);
        assert_eq!(next_batch(&mut rx, 10).await, None);
    }
}
