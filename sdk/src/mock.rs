//! `WebSocketClientMock`: a `Publisher` that records requests, for unit tests.

use std::sync::{Mutex, MutexGuard};

use crate::publisher::{PublishFuture, Publisher};
use crate::request::WebSocketRequest;
use crate::tags::Tags;
use crate::tags_tree::TagsTree;

/// Records every request sent through it instead of sending it, so a test can check what
/// a service sent.
///
/// ```
/// use std::sync::Arc;
/// use tagcast::{Publisher, Tags, WebSocketClientMock, WebSocketRequest};
///
/// // The service depends on a Publisher, never on a concrete client.
/// struct MyPowerfulService {
///     publisher: Arc<dyn Publisher>,
/// }
///
/// impl MyPowerfulService {
///     async fn service_method(&self) -> Result<(), tagcast::Error> {
///         let tag0 = Tags::new().with("tag0", "tag0Value");
///         self.publisher.send(WebSocketRequest::new("Message 0.").with_tags(tag0.clone())).await?;
///         self.publisher
///             .send(WebSocketRequest::new("Message 1.").with_tags(Tags::new().with("tag1", "tag0Value")))
///             .await?;
///         self.publisher
///             .send(WebSocketRequest::new("Message 2.").with_tags(tag0.with("tag1", "tag1Value")))
///             .await?;
///         Ok(())
///     }
/// }
///
/// # block_on(async {
/// // In the test, the mock replaces the real client.
/// let mock = Arc::new(WebSocketClientMock::new());
/// let service = MyPowerfulService { publisher: mock.clone() };
/// service.service_method().await.unwrap();
///
/// let found = mock.find_by_tags(&Tags::new().with("tag0", "tag0Value"));
/// assert_eq!(found.len(), 2);
/// assert_eq!(found[0].message(), "Message 0.");
/// assert_eq!(found[1].message(), "Message 2.");
/// assert!(!found.iter().any(|r| r.message() == "Message 1."));
/// assert_eq!(mock.count(), 3);
/// # });
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Default)]
pub struct WebSocketClientMock {
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    /// The requests in the order they were published.
    requests: Vec<WebSocketRequest>,
    /// Positions in `requests`, indexed by the requests' tags.
    by_tags: TagsTree<usize>,
    /// What `send` answers as the delivered count.
    delivered: u64,
}

impl WebSocketClientMock {
    /// An empty mock whose `send` answers a delivered count of 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// A mock whose `send` answers `delivered`.
    pub fn with_delivered(delivered: u64) -> Self {
        let mock = Self::default();
        mock.lock().delivered = delivered;
        mock
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // A panic in another test thread must not hide what was recorded.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request, as `send` does.
    pub fn record(&self, request: WebSocketRequest) {
        let mut rec = self.lock();
        let position = rec.requests.len();
        rec.by_tags.add(position, request.tags().clone());
        rec.requests.push(request);
    }

    /// The recorded requests whose tags contain every pair of `tags`, in the order they were sent.
    pub fn find_by_tags(&self, tags: &Tags) -> Vec<WebSocketRequest> {
        let rec = self.lock();
        let mut positions = rec.by_tags.find_by_tags(tags);
        positions.sort_unstable();
        positions
            .into_iter()
            .map(|p| rec.requests[p].clone())
            .collect()
    }

    /// Whether an equal request was recorded.
    pub fn contains(&self, request: &WebSocketRequest) -> bool {
        self.lock().requests.contains(request)
    }

    /// How many requests were recorded.
    pub fn count(&self) -> usize {
        self.lock().requests.len()
    }

    /// Every recorded request, in order.
    pub fn requests(&self) -> Vec<WebSocketRequest> {
        self.lock().requests.clone()
    }

    /// Forgets every recorded request.
    pub fn reset(&self) {
        let mut rec = self.lock();
        rec.requests.clear();
        rec.by_tags.reset();
    }
}

impl Publisher for WebSocketClientMock {
    fn send(&self, request: WebSocketRequest) -> PublishFuture<'_> {
        let delivered = self.lock().delivered;
        self.record(request);
        Box::pin(async move { Ok(delivered) })
    }
}
