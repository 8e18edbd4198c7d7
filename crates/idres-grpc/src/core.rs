//! What every service of the gRPC face shares: the store, the node
//! registry, the node's role, and the checks that start each call.

use std::sync::Arc;

use idres_store::Store;
use tonic::Request;

use crate::auth;
use crate::error::{ServiceError, ServiceResult};
use crate::registry::{Caller, NodeRegistry};

/// The role a node plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A national top-level node: keeps filings and the prefix table and
    /// takes secondary nodes' registrations.
    Top,
    /// A secondary node: serves its own identifiers, escrows them upstream
    /// and follows the top node's prefix table.
    Secondary,
    /// A read replica of everything upstream.
    Mirror,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Top => "top",
            Role::Secondary => "secondary",
            Role::Mirror => "mirror",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "top" => Some(Role::Top),
            "secondary" => Some(Role::Secondary),
            "mirror" => Some(Role::Mirror),
            _ => None,
        }
    }
}

/// Shared state of the services.
#[derive(Debug)]
pub struct Core {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Filings and prefixes.
    pub registry: NodeRegistry,
    /// This node's role.
    pub role: Role,
    /// The identifier schemes Resolve reads identifiers with.
    pub schemes: idres_schemes::Schemes,
}

/// What a caller may read.
#[derive(Debug, Clone)]
pub enum Reader {
    /// Everything, private values included.
    All,
    /// Public values, and everything under these prefixes (a node's own).
    Node(String),
}

impl Core {
    /// State over `store`.
    pub fn new(store: Arc<dyn Store>, role: Role) -> ServiceResult<Arc<Self>> {
        let registry = NodeRegistry::open(Arc::clone(&store))?;
        Ok(Arc::new(Self {
            store,
            registry,
            role,
            schemes: idres_schemes::Schemes::default(),
        }))
    }

    /// The caller of a request.
    pub fn caller<T>(&self, req: &Request<T>) -> ServiceResult<Caller> {
        let peer = auth::peer(req)?;
        self.registry.caller(peer)
    }

    /// Checks that the caller may read through this node.
    pub fn reader<T>(&self, req: &Request<T>) -> ServiceResult<Reader> {
        let caller = self.caller(req)?;
        match (self.role, &caller) {
            (_, Caller::Operator(_)) => Ok(Reader::All),
            (Role::Top, c) => c.active_node().map(|f| Reader::Node(f.id.clone())),
            // Secondary nodes and mirrors keep no filings: any certificate
            // from their client CA may read.
            (_, _) => Ok(Reader::Node(String::new())),
        }
    }

    /// Refuses writes on a mirror.
    pub fn writable(&self) -> ServiceResult<()> {
        if self.role == Role::Mirror {
            return Err(ServiceError::FailedPrecondition(
                "this node is a read-only mirror: write to its upstream".into(),
            ));
        }
        Ok(())
    }

    /// Refuses filing and prefix calls where they do not belong.
    pub fn top_only(&self) -> ServiceResult<()> {
        if self.role != Role::Top {
            return Err(ServiceError::FailedPrecondition(format!(
                "this node is a {} node: filing and prefixes are handled by the top-level node",
                self.role.as_str()
            )));
        }
        Ok(())
    }
}
