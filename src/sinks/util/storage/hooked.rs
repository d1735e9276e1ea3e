//! Test fakes around a real storage: a test overrides the calls it needs
//! to delay or fail (no real store does so on cue); every other call goes
//! to the real one.

use std::sync::Arc;

use bytes::Bytes;

use super::{BlockList, Committed, Condition, Created, ObjectMeta, Storage, StorageError};

/// The calls a test may override; each defaults to the real storage's.
#[async_trait::async_trait]
pub trait Hooks: Send + Sync {
    async fn stage_block(
        &self,
        inner: &dyn Storage,
        name: &str,
        id: &str,
        data: Bytes,
    ) -> Result<(), StorageError> {
        inner.stage_block(name, id, data).await
    }
    async fn commit_blocks(
        &self,
        inner: &dyn Storage,
        name: &str,
        ids: &[String],
        condition: &Condition,
    ) -> Result<Committed, StorageError> {
        inner.commit_blocks(name, ids, condition).await
    }
    async fn committed_blocks(
        &self,
        inner: &dyn Storage,
        name: &str,
    ) -> Result<Option<BlockList>, StorageError> {
        inner.committed_blocks(name).await
    }
}

/// `inner` with `hooks` in front of it.
pub struct Hooked<H> {
    pub inner: Arc<dyn Storage>,
    pub hooks: H,
}

#[async_trait::async_trait]
impl<H: Hooks> Storage for Hooked<H> {
    async fn stage_block(&self, name: &str, id: &str, data: Bytes) -> Result<(), StorageError> {
        self.hooks.stage_block(&*self.inner, name, id, data).await
    }
    async fn commit_blocks(
        &self,
        name: &str,
        ids: &[String],
        condition: &Condition,
    ) -> Result<Committed, StorageError> {
        self.hooks
            .commit_blocks(&*self.inner, name, ids, condition)
            .await
    }
    async fn committed_blocks(&self, name: &str) -> Result<Option<BlockList>, StorageError> {
        self.hooks.committed_blocks(&*self.inner, name).await
    }
    async fn uncommitted_blocks(&self, name: &str) -> Result<Vec<String>, StorageError> {
        self.inner.uncommitted_blocks(name).await
    }
    async fn put_if_absent(&self, name: &str, data: Bytes) -> Result<Created, StorageError> {
        self.inner.put_if_absent(name, data).await
    }
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.inner.put(name, data).await
    }
    async fn get(&self, name: &str) -> Result<Option<Bytes>, StorageError> {
        self.inner.get(name).await
    }
    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.inner.delete(name).await
    }
    async fn list_details(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.inner.list_details(prefix).await
    }
    async fn release(&self, name: &str, ids: &[String]) {
        self.inner.release(name, ids).await
    }
    async fn healthcheck(&self, dry_run: bool) -> Result<Option<String>, String> {
        self.inner.healthcheck(dry_run).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
