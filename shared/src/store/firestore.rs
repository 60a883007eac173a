//! SKELETON STUB — replaced by the store work.
