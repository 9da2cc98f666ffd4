//! The otter artifact format.
