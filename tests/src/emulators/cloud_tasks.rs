//! Cloud Tasks emulator launcher. SKELETON STUB.
