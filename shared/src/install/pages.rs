//! SKELETON STUB — replaced by the install work.
