pub mod crypto;
pub mod node;
pub mod storage;
#[cfg(test)]
mod tests;
