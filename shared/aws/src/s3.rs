//! The object store port over S3: one bucket, single-request uploads streamed from the file, links that are
//! presigned GETs. The bucket's encryption (SSE-KMS), public access block and TLS-only policy are the template's;
//! nothing here weakens or depends on them.

use crate::sdk_error;
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};
use keel::object::{
    MAX_LIST_LIMIT, MAX_OBJECT_BYTES, ObjectInfo, ObjectPage, ObjectStore, check_key, check_link_validity, check_prefix,
};
use keel::port::PortError;
use std::path::Path;
use std::time::Duration;

/// An S3 client for `config`. With an endpoint of its own (an emulator) it addresses buckets by path, since
/// `bucket.127.0.0.1` does not resolve; against AWS it keeps virtual-hosted addressing.
pub fn s3_client(config: &aws_config::SdkConfig) -> Client {
    let mut builder = aws_sdk_s3::config::Builder::from(config);
    if config.endpoint_url().is_some() {
        builder = builder.force_path_style(true);
    }
    Client::from_conf(builder.build())
}

/// An [`ObjectStore`] in one S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Objects {
    client: Client,
    bucket: String,
}

fn time(value: Option<&aws_sdk_s3::primitives::DateTime>) -> DateTime<Utc> {
    value
        .and_then(|t| t.to_millis().ok())
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

fn size(value: Option<i64>) -> u64 {
    value.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

impl S3Objects {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self { client, bucket: bucket.into() }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

#[async_trait]
impl ObjectStore for S3Objects {
    async fn put_file(&self, key: &str, source: &Path, content_type: &str) -> Result<ObjectInfo, PortError> {
        check_key(key)?;
        let length = tokio::fs::metadata(source)
            .await
            .map_err(|e| PortError::Unavailable(format!("object source could not be read: {}", e.kind())))?
            .len();
        if length > MAX_OBJECT_BYTES {
            return Err(PortError::Invalid(format!("an object holds at most {MAX_OBJECT_BYTES} bytes")));
        }
        let body = ByteStream::from_path(source)
            .await
            .map_err(|_| PortError::Unavailable("object source could not be read".into()))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| sdk_error("PutObject", &e))?;
        // PutObject does not say when; the object's own time is what a listing will show.
        self.head(key).await?.ok_or_else(|| PortError::Unavailable("PutObject's object is not there".into()))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        check_key(key)?;
        match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(output) => {
                let bytes = output
                    .body
                    .collect()
                    .await
                    .map_err(|_| PortError::Unavailable("GetObject's body could not be read".into()))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_error("GetObject", &e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, PortError> {
        check_key(key)?;
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(output) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: size(output.content_length()),
                modified: time(output.last_modified()),
            })),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(e) => Err(sdk_error("HeadObject", &e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), PortError> {
        check_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error("DeleteObject", &e))
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ObjectPage, PortError> {
        check_prefix(prefix)?;
        if limit == 0 {
            return Err(PortError::Invalid("a listing's limit must be at least 1".into()));
        }
        let limit = limit.min(MAX_LIST_LIMIT);
        let mut request =
            self.client.list_objects_v2().bucket(&self.bucket).max_keys(i32::try_from(limit).unwrap_or(i32::MAX));
        if !prefix.is_empty() {
            request = request.prefix(prefix);
        }
        if let Some(after) = after {
            request = request.start_after(after);
        }
        let output = request.send().await.map_err(|e| sdk_error("ListObjectsV2", &e))?;
        let objects: Vec<ObjectInfo> = output
            .contents()
            .iter()
            .filter_map(|object| {
                Some(ObjectInfo {
                    key: object.key()?.to_string(),
                    size: size(object.size()),
                    modified: time(object.last_modified()),
                })
            })
            .collect();
        let next = if output.is_truncated().unwrap_or(false) { objects.last().map(|o| o.key.clone()) } else { None };
        Ok(ObjectPage { objects, next })
    }

    async fn link(&self, key: &str, valid_for: Duration) -> Result<String, PortError> {
        check_key(key)?;
        check_link_validity(valid_for)?;
        let config = PresigningConfig::expires_in(valid_for)
            .map_err(|_| PortError::Invalid("the link's validity could not be used".into()))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| sdk_error("GetObject presigning", &e))?;
        Ok(request.uri().to_string())
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.client.head_bucket().bucket(&self.bucket).send().await.map(|_| ()).map_err(|e| sdk_error("HeadBucket", &e))
    }
}
