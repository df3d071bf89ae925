//! Which constructor builds each function the template names (by `Metadata.BuildProperties.Binary`). Start-up
//! fails when the template and the registry disagree, in either direction.

use keel::config::{ConfigError, Env};
use keel::function::{HttpFunction, QueueFunction, ScheduledFunction, StreamFunction};
use keel::resources::Resources;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A built function, by the shape AWS invokes it in.
#[derive(Clone)]
pub enum Handler {
    Http(Arc<dyn HttpFunction>),
    Queue(Arc<dyn QueueFunction>),
    Scheduled(Arc<dyn ScheduledFunction>),
    Stream(Arc<dyn StreamFunction>),
}

impl Handler {
    pub fn kind(&self) -> &'static str {
        match self {
            Handler::Http(_) => "an HTTP function",
            Handler::Queue(_) => "a queue function",
            Handler::Scheduled(_) => "a scheduled function",
            Handler::Stream(_) => "a streaming function",
        }
    }
}

type Constructor = Box<dyn Fn(&Env, &dyn Resources) -> Result<Handler, ConfigError> + Send + Sync>;

/// Binary name -> constructor.
#[derive(Default)]
pub struct Registry {
    constructors: BTreeMap<String, Constructor>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.constructors.keys()).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every function of the workspace.
    pub fn workspace() -> Self {
        Self::new()
            .http("webhook-ingest", webhook_ingest::build)
            .queue("webhook-worker", webhook_worker::build)
            .http("webhook-ops", webhook_ops::build)
            .http("flags-eval", flags_eval::build)
            .http("flags-admin", flags_admin::build)
            .http("api-docs", api_docs::build)
            .http("console", console::build)
            .http("jobs-api", jobs_api::build)
            .http("gdpr-api", gdpr_api::build)
            .queue("job-worker", job_worker::build)
            .scheduled("job-sweeper", job_sweeper::build)
            .scheduled("maintenance", maintenance::build)
            .stream("events-stream", events_stream::build)
    }

    pub fn http<T, F>(mut self, binary: &str, build: F) -> Self
    where
        T: HttpFunction + 'static,
        F: Fn(&Env, &dyn Resources) -> Result<T, ConfigError> + Send + Sync + 'static,
    {
        let constructor: Constructor =
            Box::new(move |env, resources| Ok(Handler::Http(Arc::new(build(env, resources)?))));
        self.constructors.insert(binary.to_string(), constructor);
        self
    }

    pub fn queue<T, F>(mut self, binary: &str, build: F) -> Self
    where
        T: QueueFunction + 'static,
        F: Fn(&Env, &dyn Resources) -> Result<T, ConfigError> + Send + Sync + 'static,
    {
        let constructor: Constructor =
            Box::new(move |env, resources| Ok(Handler::Queue(Arc::new(build(env, resources)?))));
        self.constructors.insert(binary.to_string(), constructor);
        self
    }

    pub fn scheduled<T, F>(mut self, binary: &str, build: F) -> Self
    where
        T: ScheduledFunction + 'static,
        F: Fn(&Env, &dyn Resources) -> Result<T, ConfigError> + Send + Sync + 'static,
    {
        let constructor: Constructor =
            Box::new(move |env, resources| Ok(Handler::Scheduled(Arc::new(build(env, resources)?))));
        self.constructors.insert(binary.to_string(), constructor);
        self
    }

    pub fn stream<T, F>(mut self, binary: &str, build: F) -> Self
    where
        T: StreamFunction + 'static,
        F: Fn(&Env, &dyn Resources) -> Result<T, ConfigError> + Send + Sync + 'static,
    {
        let constructor: Constructor =
            Box::new(move |env, resources| Ok(Handler::Stream(Arc::new(build(env, resources)?))));
        self.constructors.insert(binary.to_string(), constructor);
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.constructors.keys().map(String::as_str)
    }

    pub(crate) fn build(
        &self,
        binary: &str,
        env: &Env,
        resources: &dyn Resources,
    ) -> Option<Result<Handler, ConfigError>> {
        self.constructors.get(binary).map(|build| build(env, resources))
    }
}
