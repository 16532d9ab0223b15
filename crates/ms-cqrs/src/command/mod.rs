//! The write side: load an aggregate's state, decide, save the change and enqueue the resulting
//! events through ms-outbox, all in one transaction. (Being built.)
