/*
 * mm/lock.c - lock-order checking for debug builds.
 *
 * Each thread (each CPU, in a hypervisor) keeps the stack of engine locks it holds. An
 * acquisition whose rank is not above every held rank is an engine bug, not a guest's
 * doing: debug builds stop there (MV_BUG), where the order was broken, rather than
 * deadlocking later somewhere else. Release builds compile none of this in the lock paths.
 */
#include "mm-internal.h"

#define MV_LOCK_DEPTH 16

struct held_locks {
    unsigned depth;
    const void *lock[MV_LOCK_DEPTH];
    unsigned rank[MV_LOCK_DEPTH];
};

static _Thread_local struct held_locks held;

void mv__lock_order_acquire(const void *lock, unsigned rank)
{
    if (held.depth >= MV_LOCK_DEPTH)
        MV_BUG("lock nesting deeper than %d", MV_LOCK_DEPTH);
    for (unsigned i = 0; i < held.depth; i++) {
        if (held.lock[i] == lock)
            MV_BUG("lock of rank %u taken twice", rank);
        if (held.rank[i] >= rank)
            MV_BUG("lock of rank %u taken while holding rank %u", rank, held.rank[i]);
    }
    held.lock[held.depth] = lock;
    held.rank[held.depth] = rank;
    held.depth++;
}

void mv__lock_order_release(const void *lock, unsigned rank)
{
    for (unsigned i = held.depth; i-- > 0;) {
        if (held.lock[i] != lock)
            continue;
        for (unsigned j = i; j + 1 < held.depth; j++) {
            held.lock[j] = held.lock[j + 1];
            held.rank[j] = held.rank[j + 1];
        }
        held.depth--;
        return;
    }
    MV_BUG("lock of rank %u released but not held", rank);
}

bool mv__lock_order_held(const void *lock)
{
    for (unsigned i = 0; i < held.depth; i++)
        if (held.lock[i] == lock)
            return true;
    return false;
}

unsigned mv__lock_depth(void)
{
    return held.depth;
}

void mv__lock_contract_broken(const char *func, const char *what)
{
    MV_BUG("%s called without holding %s", func, what);
}
