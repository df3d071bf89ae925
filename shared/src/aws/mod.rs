//! Adapters over the official AWS SDK.
