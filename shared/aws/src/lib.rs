//! Adapters over the official AWS SDK: DynamoDB for the table port, SQS for the queue port, EventBridge for the
//! event bus port, S3 for the object store port, plus the [`AwsResources`] a Lambda resolves its backends with and
//! the idempotent provisioning helpers the tests and the local host use against an emulator; and
//! [`jwks::JwksVerifier`], the OIDC issuer's tokens checked where no API Gateway authorizer stands in front of a
//! function.
//!
//! Every client is built from one [`aws_config::SdkConfig`] loaded by [`load_sdk_config`]. The SDK itself honours
//! `AWS_ENDPOINT_URL` (and the per-service `AWS_ENDPOINT_URL_DYNAMODB`, `..._SQS`, `..._EVENTBRIDGE`, `..._S3`), so
//! the same code runs against AWS and against an emulator; nothing here reads or overrides the endpoint (S3 only
//! switches to path-style addressing when one is set, see [`s3::s3_client`]).

pub mod dynamodb;
pub mod eventbridge;
pub mod jwks;
pub mod provision;
pub mod resources;
pub mod s3;
pub mod sqs;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use dynamodb::DynamoTable;
pub use eventbridge::EventBridgeBus;
pub use resources::AwsResources;
pub use s3::S3Objects;
pub use sqs::SqsQueue;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use keel::port::PortError;

/// Loads the SDK configuration the default way (environment, profile, container or instance credentials, region).
/// `AWS_ENDPOINT_URL` is honoured by the SDK's default chain. Call once at start-up and build every client from it.
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// Maps an SDK failure that no adapter gives a meaning of its own to a port error. The message names the operation
/// and the service's error code or the kind of transport failure, never the request (which may hold item data) or
/// the service's free-text message.
///
/// A service-side validation failure (`ValidationException` and friends) means the request itself is wrong, so it
/// becomes [`PortError::Invalid`]: retrying cannot help. Everything else is [`PortError::Unavailable`].
pub(crate) fn sdk_error<E, R>(operation: &str, err: &SdkError<E, R>) -> PortError
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown error");
            if is_validation_code(code) {
                PortError::Invalid(format!("{operation} rejected the request: {code}"))
            } else {
                PortError::Unavailable(format!("{operation} failed: {code}"))
            }
        }
        SdkError::TimeoutError(_) => PortError::Unavailable(format!("{operation} timed out")),
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                "timed out"
            } else if failure.is_io() {
                "could not reach the endpoint"
            } else if failure.is_user() {
                "was misconfigured"
            } else {
                "could not be sent"
            };
            PortError::Unavailable(format!("{operation} {kind}"))
        }
        SdkError::ResponseError(_) => PortError::Unavailable(format!("{operation} got an unreadable response")),
        SdkError::ConstructionFailure(_) => PortError::Invalid(format!("{operation} request could not be built")),
        _ => PortError::Unavailable(format!("{operation} failed")),
    }
}

/// Error codes with which the services say "this request is wrong", as opposed to "not now".
fn is_validation_code(code: &str) -> bool {
    matches!(
        code,
        "ValidationException"
            | "InvalidParameterValue"
            | "InvalidParameterValueException"
            | "InvalidParameterCombination"
            | "MissingParameter"
            | "InvalidAttributeName"
            | "InvalidAttributeValue"
            | "InvalidMessageContents"
            | "InvalidEventPatternException"
            | "AWS.SimpleQueueService.InvalidBatchEntryId"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD_MARKER: &str = "KEEL_TEST_ENDPOINT_CHILD";

    /// `load_sdk_config` must leave `AWS_ENDPOINT_URL` to the SDK. Setting a variable in a multi-threaded test
    /// process is unsound, so the assertion runs in a child copy of this test binary that starts with it set.
    #[test]
    fn aws_endpoint_url_is_honoured_by_the_sdk() {
        let exe = std::env::current_exe().unwrap();
        let output = std::process::Command::new(exe)
            .args(["--exact", "tests::endpoint_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_MARKER, "1")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
            .env_remove("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("1 passed"), "the child test did not run: {stdout}");
    }

    #[test]
    #[ignore = "run by aws_endpoint_url_is_honoured_by_the_sdk in a child process"]
    fn endpoint_child() {
        if std::env::var_os(CHILD_MARKER).is_none() {
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config = runtime.block_on(load_sdk_config());
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:4566"));
    }

    #[test]
    fn validation_codes_are_invalid_and_the_rest_unavailable() {
        assert!(is_validation_code("ValidationException"));
        assert!(!is_validation_code("ThrottlingException"));
    }
}
