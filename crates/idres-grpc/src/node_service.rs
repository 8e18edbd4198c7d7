//! `idres.v1.NodeService`: filing, lifecycle, audit trail and prefixes.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::error::ServiceError;
use crate::pb::{self, node_service_server::NodeService, FilingState};
use crate::registry::Caller;

/// The NodeService implementation.
#[derive(Debug, Clone)]
pub struct NodeServiceImpl {
    core: Arc<Core>,
}

impl NodeServiceImpl {
    /// A service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, ServiceError> {
        self.core.top_only()?;
        self.core.caller(req)
    }

    async fn transition(
        &self,
        req: Request<pb::TransitionRequest>,
        action: &str,
        from: &[FilingState],
        to: FilingState,
    ) -> Result<Response<pb::Filing>, Status> {
        let caller = self.caller(&req)?;
        let f = self
            .core
            .registry
            .transition(&caller, action, req.into_inner(), from, to)
            .await?;
        Ok(Response::new(f))
    }
}

#[tonic::async_trait]
impl NodeService for NodeServiceImpl {
    async fn file(&self, req: Request<pb::FileRequest>) -> Result<Response<pb::Filing>, Status> {
        let caller = self.caller(&req)?;
        if let Caller::Node(_, f) = &caller {
            // A node that already has a live filing gets ALREADY_EXISTS from
            // the registry; a rejected or revoked one may file again.
            tracing::info!(filing = %f.id, "node files again");
        }
        let f = self.core.registry.file(&caller, req.into_inner()).await?;
        Ok(Response::new(f))
    }

    async fn get_filing(
        &self,
        req: Request<pb::GetFilingRequest>,
    ) -> Result<Response<pb::Filing>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(
            self.core.registry.get_filing(&caller, &req.get_ref().id)?,
        ))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(
            self.core.registry.list_nodes(&caller, req.get_ref())?,
        ))
    }

    async fn approve(
        &self,
        req: Request<pb::TransitionRequest>,
    ) -> Result<Response<pb::Filing>, Status> {
        self.transition(req, "approve", &[FilingState::Pending], FilingState::Active)
            .await
    }

    async fn reject(
        &self,
        req: Request<pb::TransitionRequest>,
    ) -> Result<Response<pb::Filing>, Status> {
        self.transition(
            req,
            "reject",
            &[FilingState::Pending],
            FilingState::Rejected,
        )
        .await
    }

    async fn suspend(
        &self,
        req: Request<pb::TransitionRequest>,
    ) -> Result<Response<pb::Filing>, Status> {
        self.transition(
            req,
            "suspend",
            &[FilingState::Active],
            FilingState::Suspended,
        )
        .await
    }

    async fn reinstate(
        &self,
        req: Request<pb::TransitionRequest>,
    ) -> Result<Response<pb::Filing>, Status> {
        self.transition(
            req,
            "reinstate",
            &[FilingState::Suspended],
            FilingState::Active,
        )
        .await
    }

    async fn revoke(
        &self,
        req: Request<pb::TransitionRequest>,
    ) -> Result<Response<pb::Filing>, Status> {
        self.transition(
            req,
            "revoke",
            &[
                FilingState::Pending,
                FilingState::Active,
                FilingState::Suspended,
            ],
            FilingState::Revoked,
        )
        .await
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(
            self.core.registry.list_audit(&caller, req.get_ref())?,
        ))
    }

    async fn allocate(
        &self,
        req: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::PrefixAllocation>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(
            self.core
                .registry
                .allocate(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn deallocate(
        &self,
        req: Request<pb::DeallocateRequest>,
    ) -> Result<Response<pb::PrefixAllocation>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(
            self.core
                .registry
                .deallocate(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn home(
        &self,
        req: Request<pb::HomeRequest>,
    ) -> Result<Response<pb::PrefixAllocation>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(
            self.core.registry.home(&caller, req.into_inner()).await?,
        ))
    }

    async fn unhome(
        &self,
        req: Request<pb::HomeRequest>,
    ) -> Result<Response<pb::PrefixAllocation>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(
            self.core.registry.unhome(&caller, req.into_inner()).await?,
        ))
    }

    async fn rotate_certificate(
        &self,
        req: Request<pb::RotateCertificateRequest>,
    ) -> Result<Response<pb::Filing>, Status> {
        let caller = self.caller(&req)?;
        Ok(Response::new(
            self.core.registry.rotate(&caller, req.into_inner()).await?,
        ))
    }

    async fn list_prefixes(
        &self,
        req: Request<pb::ListPrefixesRequest>,
    ) -> Result<Response<pb::ListPrefixesResponse>, Status> {
        let caller = self.caller(&req)?;
        let prefixes = match &caller {
            Caller::Operator(_) => {
                let id = &req.get_ref().filing_id;
                self.core
                    .registry
                    .prefixes_of((!id.is_empty()).then_some(id.as_str()))
            }
            other => {
                let f = other.active_node()?;
                self.core.registry.prefixes_of(Some(&f.id))
            }
        };
        Ok(Response::new(pb::ListPrefixesResponse { prefixes }))
    }
}
