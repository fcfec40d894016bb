//! A supervisor's children: start-ordered, indexed by id and by running actor, so that lookups
//! and exits cost O(1) even in a dynamic supervisor with many thousands of children.

use std::{
    collections::{HashMap, VecDeque},
    ops::{Index, IndexMut},
    sync::Arc,
};

use ractor::{ActorCell, ActorId};
use tokio::time::Instant;

use crate::{
    ChildSpec,
    introspection::{ChildInfo, ChildStatus},
};

pub(crate) struct ChildState {
    pub(crate) spec: ChildSpec,
    cell: Option<ActorCell>,
    pub(crate) status: ChildStatus,
    pub(crate) restarts: u32,
    pub(crate) backoff_attempt: u32,
    pub(crate) started_at: Option<Instant>,
    pub(crate) pending: Option<u64>,
    /// Restart times for intensity, per child in a dynamic supervisor.
    pub(crate) window: VecDeque<Instant>,
}

impl ChildState {
    pub(crate) fn new(spec: ChildSpec) -> Self {
        ChildState {
            spec,
            cell: None,
            status: ChildStatus::Terminated,
            restarts: 0,
            backoff_attempt: 0,
            started_at: None,
            pending: None,
            window: VecDeque::new(),
        }
    }

    pub(crate) fn info(&self) -> ChildInfo {
        ChildInfo {
            id: self.spec.id.clone(),
            kind: self.spec.start.kind,
            restart: self.spec.restart,
            status: self.status,
            restarts: self.restarts,
            mailbox_depth: self.spec.start.slot.as_ref().map(|slot| slot.depth()),
        }
    }
}

impl ChildState {
    /// Whether an incarnation is running.
    pub(crate) fn is_running(&self) -> bool {
        self.cell.is_some()
    }
}

/// The children, in start order for a static supervisor. A dynamic supervisor's children have
/// no meaningful order (OTP's dynamic supervisors stop theirs in no particular order), so removal
/// there swaps the last child into the gap instead of shifting them all.
pub(crate) struct Children {
    list: Vec<ChildState>,
    by_id: HashMap<Arc<str>, usize>,
    by_actor: HashMap<ActorId, usize>,
    ordered: bool,
}

impl Children {
    pub(crate) fn new(list: Vec<ChildState>, ordered: bool) -> Self {
        let by_id = list
            .iter()
            .enumerate()
            .map(|(index, child)| (child.spec.id.clone(), index))
            .collect();
        Children {
            list,
            by_id,
            by_actor: HashMap::new(),
            ordered,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &ChildState> {
        self.list.iter()
    }

    pub(crate) fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn index_of_actor(&self, actor: ActorId) -> Option<usize> {
        self.by_actor.get(&actor).copied()
    }

    pub(crate) fn push(&mut self, child: ChildState) -> usize {
        let index = self.list.len();
        self.by_id.insert(child.spec.id.clone(), index);
        self.list.push(child);
        index
    }

    pub(crate) fn set_cell(&mut self, index: usize, cell: ActorCell) {
        if let Some(old) = self.list[index].cell.take() {
            self.by_actor.remove(&old.get_id());
        }
        self.by_actor.insert(cell.get_id(), index);
        self.list[index].cell = Some(cell);
    }

    pub(crate) fn take_cell(&mut self, index: usize) -> Option<ActorCell> {
        let cell = self.list[index].cell.take()?;
        self.by_actor.remove(&cell.get_id());
        Some(cell)
    }

    pub(crate) fn remove(&mut self, index: usize) -> ChildState {
        let child = if self.ordered {
            self.list.remove(index)
        } else {
            self.list.swap_remove(index)
        };
        self.by_id.remove(&child.spec.id);
        if let Some(cell) = &child.cell {
            self.by_actor.remove(&cell.get_id());
        }
        // Re-point the children that moved: all after `index` when shifting, the one swapped in
        // otherwise.
        let moved = if self.ordered {
            index..self.list.len()
        } else {
            index..(index + 1).min(self.list.len())
        };
        for position in moved {
            let moved_child = &self.list[position];
            self.by_id.insert(moved_child.spec.id.clone(), position);
            if let Some(cell) = &moved_child.cell {
                self.by_actor.insert(cell.get_id(), position);
            }
        }
        child
    }
}

impl Index<usize> for Children {
    type Output = ChildState;

    fn index(&self, index: usize) -> &ChildState {
        &self.list[index]
    }
}

impl IndexMut<usize> for Children {
    fn index_mut(&mut self, index: usize) -> &mut ChildState {
        &mut self.list[index]
    }
}
