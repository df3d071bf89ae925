//! `GET /v1/admin/gdpr/data-map`: the record of processing (GDPR Art. 30), every entry of every domain.

use keel::datamap::Entry;
use keel::http::{self, Response};
use keel::openapi::{Doc, Reply, schema};
use keel::problem::Problem;
use serde::Serialize;

#[derive(Serialize, utoipa::ToSchema)]
pub struct DataMap {
    /// In the order an erasure walks them: items that name others before the items they name.
    pub entries: Vec<Entry>,
}

pub const SHOW: Doc = Doc {
    summary: "The data map",
    description: "Every kind of item Keel keeps: its table and key pattern, the personal data it holds and about \
        whom, purpose, recipients, retention, and what an export and an erasure do with it.",
    replies: &[Reply::json(200, "The data map.", schema::<DataMap>)],
    ..Doc::NONE
};

pub async fn show() -> Result<Response, Problem> {
    Ok(http::json(200, &DataMap { entries: keel_gdpr::datamap::data_map() }))
}
