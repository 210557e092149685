//! Unit tests of the ledger rules, without a database.

use super::*;
