//! Test support for the SoftHSM integration suites.
