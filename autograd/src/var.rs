//! `Var`: a tensor that remembers how it was computed, and reverse-mode backpropagation.
//!
//! Every op on `Var`s computes its value eagerly and, when some input requires a gradient (and
//! we are not inside [`no_grad`]), attaches a node holding (a) the input `Var`s and (b) a
//! [`Backward`] object with the few tensors its gradient needs. Nodes point only at their
//! inputs, never at their outputs, so the graph cannot contain reference cycles; dropping the
//! last output frees the whole graph.
//!
//! `backward()` walks the nodes reachable from the output in reverse creation order (a valid
//! reverse topological order, since an op's output is always created after its inputs),
//! hands each node the gradient of its output, and *takes* the node out of its `Var` as it
//! goes: saved tensors are freed as soon as they have been used, and a second backward through
//! the same graph finds the nodes gone and returns an error instead of double counting.
//! Leaf gradients accumulate with `+=` across backward calls until [`Var::zero_grad`].

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tensor::{Result, Tensor, TensorError};

/// The gradient rule of one op. `grad_out` has the shape of the op's output; return one entry
/// per input, `None` where `needs[i]` is false (or the input has no gradient).
pub trait Backward: Send + Sync {
    fn name(&self) -> &'static str;
    fn backward(&self, grad_out: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>>;
}

/// A backward rule written as a closure (most ops use this: forward and backward sit together).
pub struct FnBackward<F> {
    name: &'static str,
    f: F,
}

impl<F> Backward for FnBackward<F>
where
    F: Fn(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.name
    }
    fn backward(&self, grad_out: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        (self.f)(grad_out, needs)
    }
}

struct Node {
    /// Graph handles of the inputs: enough to route gradients, without keeping input values
    /// alive (an op that needs a value for its gradient saves it in its `Backward`).
    inputs: Vec<Arc<GraphNode>>,
    op: Box<dyn Backward>,
}

/// The part of a variable that the graph points at.
struct GraphNode {
    id: u64,
    shape: Vec<usize>,
    requires_grad: AtomicBool,
    /// `Some` for op outputs until backward consumes it; always `None` for leaves.
    node: Mutex<Option<Node>>,
    is_leaf: bool,
    /// Accumulated gradient (leaves only).
    grad: Mutex<Option<Tensor>>,
}

struct VarInner {
    value: RwLock<Tensor>,
    graph: Arc<GraphNode>,
}

/// A differentiable tensor. Cloning is cheap and shares the same variable.
#[derive(Clone)]
pub struct Var(Arc<VarInner>);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with graph recording switched off on this thread (evaluation, optimiser updates).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(false)));
    f()
}

/// Is graph recording on for this thread?
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// While [`track_parameters`] runs: every parameter created on this thread.
    static CREATED_PARAMETERS: std::cell::RefCell<Option<Vec<Var>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` and returns its result with every parameter ([`Var::parameter`]) it created on
/// this thread. Tests use it to check that a module lists every parameter it owns.
pub fn track_parameters<R>(f: impl FnOnce() -> R) -> (R, Vec<Var>) {
    let outer = CREATED_PARAMETERS.with(|t| t.borrow_mut().replace(Vec::new()));
    let result = f();
    let created = CREATED_PARAMETERS.with(|t| std::mem::replace(&mut *t.borrow_mut(), outer)).unwrap_or_default();
    // a tracker around this one sees these parameters too
    CREATED_PARAMETERS.with(|t| {
        if let Some(list) = t.borrow_mut().as_mut() {
            list.extend(created.iter().cloned());
        }
    });
    (result, created)
}

impl Var {
    fn make(value: Tensor, requires_grad: bool, node: Option<Node>) -> Var {
        let is_leaf = node.is_none();
        let graph = Arc::new(GraphNode {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape: value.shape().to_vec(),
            requires_grad: AtomicBool::new(requires_grad),
            node: Mutex::new(node),
            is_leaf,
            grad: Mutex::new(None),
        });
        Var(Arc::new(VarInner { value: RwLock::new(value), graph }))
    }

    /// A constant: no gradient flows into it.
    pub fn constant(value: Tensor) -> Var {
        Var::make(value, false, None)
    }

    /// A leaf that requires a gradient (a parameter or an input under test).
    pub fn parameter(value: Tensor) -> Var {
        let v = Var::make(value, true, None);
        CREATED_PARAMETERS.with(|t| {
            if let Some(list) = t.borrow_mut().as_mut() {
                list.push(v.clone());
            }
        });
        v
    }

    /// The output of an op: records `op` when grad mode is on and some input requires a
    /// gradient; otherwise a constant (no graph is kept).
    pub fn from_op(value: Tensor, inputs: &[&Var], op: impl Backward + 'static) -> Var {
        if is_grad_enabled() && inputs.iter().any(|v| v.requires_grad()) {
            let inputs = inputs.iter().map(|v| v.0.graph.clone()).collect();
            Var::make(value, true, Some(Node { inputs, op: Box::new(op) }))
        } else {
            Var::constant(value)
        }
    }

    /// [`Var::from_op`] with a closure as the backward rule.
    pub fn from_fn<F>(value: Tensor, inputs: &[&Var], name: &'static str, f: F) -> Var
    where
        F: Fn(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    {
        Var::from_op(value, inputs, FnBackward { name, f })
    }

    /// The current value (a cheap handle to the same storage).
    pub fn value(&self) -> Tensor {
        self.0.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces a leaf's value (optimiser updates, loading weights). Errors on an op output,
    /// whose value its graph depends on, and on a shape change.
    pub fn set_value(&self, value: Tensor) -> Result<()> {
        if !self.is_leaf() {
            return Err(TensorError::Graph("set_value on the output of an op; only leaves can be assigned".into()));
        }
        let mut guard = self.0.value.write().unwrap_or_else(|e| e.into_inner());
        if guard.shape() != value.shape() {
            return Err(TensorError::Graph(format!(
                "set_value: shape {:?} replaces {:?}",
                value.shape(),
                guard.shape()
            )));
        }
        *guard = value;
        Ok(())
    }

    /// Updates a leaf's value in place (optimiser steps): `f` receives its elements, contiguous.
    /// No copy is made while this `Var` holds the only reference to its buffer. When anything
    /// else still references it (a tensor handed out by [`Var::value`], a saved activation, a
    /// packed-weight cache entry, a memory-mapped file), the buffer is copied first, exactly
    /// as [`Tensor::data_mut`] does, so no other holder ever sees the change.
    pub fn update_in_place<R>(&self, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
        if !self.is_leaf() {
            return Err(TensorError::Graph(
                "update_in_place on the output of an op; only leaves can be assigned".into(),
            ));
        }
        let mut guard = self.0.value.write().unwrap_or_else(|e| e.into_inner());
        Ok(f(guard.data_mut()))
    }

    pub fn shape(&self) -> Vec<usize> {
        self.0.graph.shape.clone()
    }

    pub fn requires_grad(&self) -> bool {
        self.0.graph.requires_grad.load(Ordering::Relaxed)
    }

    /// Freezes (false) or unfreezes (true) a leaf. Op outputs keep what their inputs imply.
    pub fn set_requires_grad(&self, on: bool) {
        if self.is_leaf() {
            self.0.graph.requires_grad.store(on, Ordering::Relaxed);
        }
    }

    pub fn is_leaf(&self) -> bool {
        self.0.graph.is_leaf
    }

    /// Unique id (creation order).
    pub fn id(&self) -> u64 {
        self.0.graph.id
    }

    /// Do two handles refer to the same variable?
    pub fn same_as(&self, other: &Var) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The accumulated gradient of a leaf, if any.
    pub fn grad(&self) -> Option<Tensor> {
        lock(&self.0.graph.grad).clone()
    }

    pub fn set_grad(&self, grad: Option<Tensor>) {
        *lock(&self.0.graph.grad) = grad;
    }

    pub fn zero_grad(&self) {
        self.set_grad(None);
    }

    /// The same value, cut from the graph.
    pub fn detach(&self) -> Var {
        Var::constant(self.value())
    }

    /// Backpropagates from a one-element output (gradient 1).
    pub fn backward(&self) -> Result<()> {
        let value = self.value();
        if value.numel() != 1 {
            return Err(TensorError::Graph(format!(
                "backward() needs a single-value output, got shape {:?}; use backward_with(grad)",
                value.shape()
            )));
        }
        self.backward_with(Tensor::full_on(value.shape(), 1.0, value.device())?)
    }

    /// Backpropagates `grad` (shaped like this output) through the graph.
    pub fn backward_with(&self, grad: Tensor) -> Result<()> {
        self.backward_with_hook(grad, &mut |_| Ok(()))
    }

    /// [`Var::backward_with`], calling `on_ready` with the ids ([`Var::id`]) of the leaves whose
    /// gradients are final, as soon as the last op that feeds them has run (every leaf reached
    /// is reported once, in an order that depends only on the graph). Data-parallel training
    /// starts reducing those gradients across workers while backward goes on with the rest, as
    /// PyTorch's DDP does with its gradient hooks.
    pub fn backward_with_hook(&self, grad: Tensor, on_ready: &mut dyn FnMut(&[u64]) -> Result<()>) -> Result<()> {
        let root = &self.0.graph;
        if grad.shape() != root.shape.as_slice() {
            return Err(TensorError::Graph(format!(
                "backward_with: gradient shape {:?} differs from output shape {:?}",
                grad.shape(),
                root.shape
            )));
        }
        if !self.requires_grad() {
            return Err(TensorError::Graph("backward() on a value that does not require grad".into()));
        }
        if root.is_leaf {
            accumulate_leaf(root, grad)?;
            return on_ready(&[root.id]);
        }
        // Collect the op outputs reachable from the root (leaves are handled when reached).
        let mut order: Vec<Arc<GraphNode>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![root.clone()];
        while let Some(v) = stack.pop() {
            if v.is_leaf || !seen.insert(v.id) {
                continue;
            }
            match lock(&v.node).as_ref() {
                Some(n) => stack.extend(n.inputs.iter().filter(|i| i.requires_grad.load(Ordering::Relaxed)).cloned()),
                None => {
                    return Err(TensorError::Graph(
                        "backward through a graph that was already backpropagated (its saved tensors are freed); \
                         recompute the forward pass"
                            .into(),
                    ))
                }
            }
            order.push(v);
        }
        order.sort_by_key(|v| std::cmp::Reverse(v.id));
        // ready_after[k]: the leaves whose last consumer is the k-th op of `order`
        let mut last_use: HashMap<u64, usize> = HashMap::new();
        for (k, v) in order.iter().enumerate() {
            if let Some(n) = lock(&v.node).as_ref() {
                for i in n.inputs.iter().filter(|i| i.is_leaf && i.requires_grad.load(Ordering::Relaxed)) {
                    last_use.insert(i.id, k);
                }
            }
        }
        let mut ready_after: Vec<Vec<u64>> = vec![Vec::new(); order.len()];
        for (&id, &k) in &last_use {
            ready_after[k].push(id);
        }
        for ids in &mut ready_after {
            ids.sort_unstable();
        }

        let mut pending: HashMap<u64, Tensor> = HashMap::new();
        pending.insert(root.id, grad);
        for (v, ready) in order.into_iter().zip(ready_after) {
            backward_node(&v, &mut pending)?;
            if !ready.is_empty() {
                on_ready(&ready)?;
            }
        }
        Ok(())
    }
}

/// Runs one op's backward with its pending output gradient (if any reached it) and hands the
/// input gradients on: leaves accumulate, inner nodes wait in `pending`.
fn backward_node(v: &GraphNode, pending: &mut HashMap<u64, Tensor>) -> Result<()> {
    let Some(g) = pending.remove(&v.id) else { return Ok(()) };
    let Some(node) = lock(&v.node).take() else { return Ok(()) };
    let needs: Vec<bool> = node.inputs.iter().map(|i| i.requires_grad.load(Ordering::Relaxed)).collect();
    let started = profile::enabled().then(std::time::Instant::now);
    let grads = node.op.backward(&g, &needs)?;
    if let Some(t) = started {
        profile::record(node.op.name(), t.elapsed());
    }
    if grads.len() != node.inputs.len() {
        return Err(TensorError::Graph(format!(
            "op {} returned {} gradients for {} inputs",
            node.op.name(),
            grads.len(),
            node.inputs.len()
        )));
    }
    for ((input, grad), need) in node.inputs.iter().zip(grads).zip(needs) {
        let Some(grad) = grad else { continue };
        if !need {
            continue;
        }
        if grad.shape() != input.shape.as_slice() {
            return Err(TensorError::Graph(format!(
                "op {} produced a gradient of shape {:?} for an input of shape {:?}",
                node.op.name(),
                grad.shape(),
                input.shape
            )));
        }
        if input.is_leaf {
            accumulate_leaf(input, grad)?;
        } else {
            let merged = match pending.remove(&input.id) {
                Some(prev) => prev.add(&grad)?,
                None => grad,
            };
            pending.insert(input.id, merged);
        }
    }
    // `node` (input handles and saved tensors) is dropped here.
    Ok(())
}

/// Opt-in timing of backward ops by name: set `ALIGN_PROFILE_BACKWARD=1` and call
/// [`profile::report`] to print and reset the table.
pub mod profile {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    fn table() -> &'static Mutex<HashMap<&'static str, (Duration, u64)>> {
        static T: OnceLock<Mutex<HashMap<&'static str, (Duration, u64)>>> = OnceLock::new();
        T.get_or_init(|| Mutex::new(HashMap::new()))
    }

    pub fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("ALIGN_PROFILE_BACKWARD").is_ok_and(|v| v != "0"))
    }

    pub(crate) fn record(name: &'static str, d: Duration) {
        let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
        let e = t.entry(name).or_insert((Duration::ZERO, 0));
        e.0 += d;
        e.1 += 1;
    }

    /// The accumulated table, slowest first, then cleared.
    pub fn report() -> String {
        let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = t.drain().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
        rows.iter().map(|(n, (d, c))| format!("{n:>20} {:9.2} ms {c:6} calls\n", d.as_secs_f64() * 1e3)).collect()
    }
}

fn accumulate_leaf(leaf: &GraphNode, grad: Tensor) -> Result<()> {
    let mut slot = lock(&leaf.grad);
    *slot = Some(match slot.take() {
        Some(prev) => prev.add(&grad)?,
        None => grad.contiguous(),
    });
    Ok(())
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = lock(&self.0.graph.node).as_ref().map(|n| n.op.name());
        write!(f, "Var(id={}, requires_grad={}, op={:?}, value={})", self.id(), self.requires_grad(), op, self.value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_in_place_writes_the_buffer_unless_someone_else_holds_it() {
        let p = Var::parameter(Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3]).unwrap());
        let before = Arc::as_ptr(p.value().storage());
        p.update_in_place(|w| w.iter_mut().for_each(|x| *x *= 2.0)).unwrap();
        let after = p.value();
        // sole holder: the same buffer, updated
        assert_eq!(Arc::as_ptr(after.storage()), before);
        assert_eq!(after.to_vec(), vec![2.0, 4.0, 6.0]);
        // a handle held elsewhere keeps its values: the update goes to a copy
        let held = p.value();
        p.update_in_place(|w| w[0] = -1.0).unwrap();
        assert_eq!(held.to_vec(), vec![2.0, 4.0, 6.0]);
        assert_eq!(p.value().to_vec(), vec![-1.0, 4.0, 6.0]);
        // only leaves can be assigned
        let y = crate::ops::elementwise::mul_scalar(&p, 2.0);
        assert!(y.update_in_place(|_| ()).is_err());
    }

    #[test]
    fn the_backward_hook_reports_each_leaf_once_when_its_gradient_is_final() {
        use crate::ops::{elementwise as ew, reduce};
        let leaf = |v: f32| Var::parameter(Tensor::from_vec(vec![v; 3], &[3]).unwrap());
        let (a, b, c, unused) = (leaf(1.0), leaf(2.0), leaf(3.0), leaf(4.0));
        // loss = sum(a * b) + sum(a * c) + sum(c): a's gradient is complete only after both products
        let ab = reduce::sum_all(&ew::mul(&a, &b).unwrap()).unwrap();
        let ac = reduce::sum_all(&ew::mul(&a, &c).unwrap()).unwrap();
        let loss = ew::add(&ew::add(&ab, &ac).unwrap(), &reduce::sum_all(&c).unwrap()).unwrap();
        let (leaves, mut reported) = ([&a, &b, &c, &unused], Vec::new());
        loss.backward_with_hook(Tensor::scalar(1.0), &mut |ids| {
            for id in ids {
                let v = leaves.iter().find(|v| v.id() == *id).expect("a leaf of this graph");
                // the gradient seen at report time is the final one
                reported.push((*id, v.grad().unwrap().to_vec()));
            }
            Ok(())
        })
        .unwrap();
        reported.sort_by_key(|r| r.0);
        let expect = vec![(a.id(), vec![5.0; 3]), (b.id(), vec![1.0; 3]), (c.id(), vec![2.0; 3])];
        assert_eq!(reported, expect);
        for v in [&a, &b, &c] {
            assert_eq!(reported.iter().find(|r| r.0 == v.id()).unwrap().1, v.grad().unwrap().to_vec());
        }
    }
}
