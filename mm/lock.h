/*
 * mm/lock.h - the engine's own spinlocks and reader-writer locks, on C11 atomics.
 *
 * The core needs no pthread: hypervisor code cannot sleep, so every lock spins, with a
 * pause hint. Each lock carries its rank (mm/locks.h); with MV_DEBUG >= 2 every
 * acquisition checks the order against the locks this thread already holds, and
 * mv__lock_assert_held() checks a function's locking contract.
 *
 * Spinlock: test-and-test-and-set with bounded exponential pause. Not FIFO: on a host that
 * deschedules threads (the simulator runs more vCPU threads than cores) a ticket lock
 * convoys behind a waiter that is not running; this one hands the lock to whoever runs.
 * Rwlock: writer-preferring counter lock, readers spin while a writer waits or holds it.
 */
#ifndef MV_MM_LOCK_H
#define MV_MM_LOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "locks.h"

#ifndef MV_DEBUG
#define MV_DEBUG 1
#endif

typedef struct mv_spinlock {
    _Atomic uint32_t locked;
    uint16_t rank;
} mv_spinlock_t;

typedef struct mv_rwlock {
    /* bit 31: writer holds; bit 30: writer waiting; low bits: readers */
    _Atomic uint32_t state;
    uint16_t rank;
} mv_rwlock_t;

#define MV_RW_WRITER 0x80000000u
#define MV_RW_WAITING 0x40000000u
#define MV_RW_READERS 0x3fffffffu

static inline void mv__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Lock-order bookkeeping for debug builds (lock.c). */
void mv__lock_order_acquire(const void *lock, unsigned rank);
void mv__lock_order_release(const void *lock, unsigned rank);
bool mv__lock_order_held(const void *lock);

static inline void mv_spin_init(mv_spinlock_t *l, unsigned rank)
{
    atomic_init(&l->locked, 0);
    l->rank = (uint16_t)rank;
}

static inline bool mv__spin_try(mv_spinlock_t *l)
{
    return !atomic_load_explicit(&l->locked, memory_order_relaxed) &&
           !atomic_exchange_explicit(&l->locked, 1, memory_order_acquire);
}

static inline void mv_spin_lock(mv_spinlock_t *l)
{
    if (MV_DEBUG >= 2)
        mv__lock_order_acquire(l, l->rank);
    unsigned pause = 1;
    while (!mv__spin_try(l)) {
        for (unsigned i = 0; i < pause; i++)
            mv__cpu_relax();
        if (pause < 64)
            pause <<= 1;
    }
}

static inline bool mv_spin_trylock(mv_spinlock_t *l)
{
    if (!mv__spin_try(l))
        return false;
    if (MV_DEBUG >= 2)
        mv__lock_order_acquire(l, l->rank);
    return true;
}

static inline void mv_spin_unlock(mv_spinlock_t *l)
{
    if (MV_DEBUG >= 2)
        mv__lock_order_release(l, l->rank);
    atomic_store_explicit(&l->locked, 0, memory_order_release);
}

static inline void mv_rw_init(mv_rwlock_t *l, unsigned rank)
{
    atomic_init(&l->state, 0);
    l->rank = (uint16_t)rank;
}

static inline void mv_rw_read_lock(mv_rwlock_t *l)
{
    if (MV_DEBUG >= 2)
        mv__lock_order_acquire(l, l->rank);
    for (;;) {
        uint32_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
        if (!(s & (MV_RW_WRITER | MV_RW_WAITING)) &&
            atomic_compare_exchange_weak_explicit(&l->state, &s, s + 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
        mv__cpu_relax();
    }
}

static inline void mv_rw_read_unlock(mv_rwlock_t *l)
{
    if (MV_DEBUG >= 2)
        mv__lock_order_release(l, l->rank);
    atomic_fetch_sub_explicit(&l->state, 1, memory_order_release);
}

static inline void mv_rw_write_lock(mv_rwlock_t *l)
{
    if (MV_DEBUG >= 2)
        mv__lock_order_acquire(l, l->rank);
    for (;;) {
        uint32_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
        if (!(s & (MV_RW_WRITER | MV_RW_READERS))) {
            if (atomic_compare_exchange_weak_explicit(&l->state, &s, MV_RW_WRITER,
                                                      memory_order_acquire,
                                                      memory_order_relaxed))
                return;
        } else if (!(s & MV_RW_WAITING)) {
            atomic_fetch_or_explicit(&l->state, MV_RW_WAITING, memory_order_relaxed);
        }
        mv__cpu_relax();
    }
}

static inline void mv_rw_write_unlock(mv_rwlock_t *l)
{
    if (MV_DEBUG >= 2)
        mv__lock_order_release(l, l->rank);
    atomic_fetch_and_explicit(&l->state, ~(MV_RW_WRITER | MV_RW_WAITING),
                              memory_order_release);
}

/* A function's locking contract: "must be called with `l` held". */
#define mv__assert_held(l)                                                   \
    do {                                                                     \
        if (MV_DEBUG >= 2 && !mv__lock_order_held(l))                        \
            mv__lock_contract_broken(__func__, #l);                          \
    } while (0)

void mv__lock_contract_broken(const char *func, const char *what);

#endif
