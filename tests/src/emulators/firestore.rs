//! Firestore emulator launcher. SKELETON STUB.
