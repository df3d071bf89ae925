//! Adapters over an embedded redb database.
