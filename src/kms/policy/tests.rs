//! Document-level tests of the policy engine.
