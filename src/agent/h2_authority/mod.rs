//! Placeholder: see the h2 `:authority` adapter work.
