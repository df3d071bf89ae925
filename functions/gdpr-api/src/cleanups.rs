//! `GET /v1/admin/cleanups`: each scheduled cleanup's latest runs (what the maintenance function removed, whether
//! it finished, its error), so an operator sees retention being enforced.

use crate::{GdprApi, port_problem};
use keel::cleanup::CleanupRun;
use keel::http::{self, Response};
use keel::openapi::{Doc, Reply, schema};
use keel::problem::Problem;
use serde::Serialize;

/// Runs listed per cleanup.
const RUNS: usize = 10;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Cleanups {
    pub cleanups: Vec<CleanupRuns>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CleanupRuns {
    pub name: String,
    /// The latest runs, newest first (kept 30 days).
    pub runs: Vec<CleanupRun>,
}

pub const LIST: Doc = Doc {
    summary: "Scheduled cleanups and their runs",
    description: "Platform admins: every cleanup the maintenance function runs, each with its latest 10 runs.",
    replies: &[Reply::json(200, "The cleanups.", schema::<Cleanups>)],
    ..Doc::NONE
};

impl GdprApi {
    pub(crate) async fn cleanups(&self) -> Result<Response, Problem> {
        let mut cleanups = Vec::new();
        for name in keel_gdpr::CLEANUPS {
            let runs = self.runs.latest(name, RUNS).await.map_err(port_problem)?;
            cleanups.push(CleanupRuns { name: name.to_string(), runs });
        }
        Ok(http::json(200, &Cleanups { cleanups }))
    }
}
