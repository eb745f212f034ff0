/*
 * memvirt/common.h - types, error codes and version shared by every module.
 *
 * Conventions of the whole public API:
 *  - Functions return 0 or a negative MV_E* code. The codes are themselves negative and
 *    carry Linux's errno numbers (MV_EINVAL == -22); return them as they are.
 *  - A refused request changes nothing. Batched calls also report through a `done`
 *    out-parameter how many items were completed before they stopped.
 *  - Configuration and statistics structs begin with `size_t size`, set by the caller to
 *    sizeof the struct it was compiled against, so fields can be appended later.
 *  - Machine and guest frame numbers are plain 64-bit integers in this header, whatever
 *    the build; the engine may box them internally.
 *  - The library never prints and never aborts on bad input; it logs through the platform.
 */
#ifndef MEMVIRT_COMMON_H
#define MEMVIRT_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <memvirt/version.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every exported symbol carries MV_API; everything else is hidden. */
#if defined(MV_BUILDING_LIBRARY) && defined(__GNUC__)
#define MV_API __attribute__((visibility("default")))
#else
#define MV_API
#endif

typedef uint64_t mv_mfn_t;   /* machine frame number */
typedef uint64_t mv_gfn_t;   /* guest (pseudo-)physical frame number */
typedef uint64_t mv_paddr_t; /* machine or guest-physical byte address */
typedef uint16_t mv_domid_t; /* domain id, 0 .. MV_DOMID_MAX */

#define MV_PAGE_SHIFT 12u
#define MV_PAGE_SIZE (1u << MV_PAGE_SHIFT)
#define MV_INVALID_MFN (~(mv_mfn_t)0)
#define MV_INVALID_GFN (~(mv_gfn_t)0)

/* Largest allocation order: 2^18 frames, 1 GiB. */
#define MV_MAX_ORDER 18u

/* Error codes: negative, Linux numbering. */
#define MV_OK 0
#define MV_EPERM (-1)       /* not allowed for this caller or object */
#define MV_ENOENT (-2)      /* no such entry (nothing mapped, no such name) */
#define MV_ESRCH (-3)       /* no such domain */
#define MV_EIO (-5)         /* the platform failed an operation */
#define MV_E2BIG (-7)       /* size field larger than known with non-zero tail */
#define MV_EAGAIN (-11)     /* preempted: progress kept, call again */
#define MV_ENOMEM (-12)     /* out of machine memory or metadata */
#define MV_EACCES (-13)     /* access rights refuse it */
#define MV_EFAULT (-14)     /* bad address */
#define MV_EBUSY (-16)      /* object still in use (references, pins) */
#define MV_EEXIST (-17)     /* already exists / already backed */
#define MV_EXDEV (-18)      /* object belongs to another domain */
#define MV_ENODEV (-19)     /* no such NUMA node */
#define MV_EINVAL (-22)     /* malformed argument */
#define MV_ENOSPC (-28)     /* a fixed-size table is full */
#define MV_ERANGE (-34)     /* number out of range (frame number, address width) */
#define MV_ENOSYS (-38)     /* not built into this library */
#define MV_EOVERFLOW (-75)  /* a count would overflow */
#define MV_EOPNOTSUPP (-95) /* not supported in this mode */
#define MV_EALREADY (-114)  /* already in that state (double free, double pin) */
#define MV_EUCLEAN (-117)   /* the audit found violations */

/* Name and explanation of an MV_E* code (or 0); never NULL. */
MV_API const char *mv_strerror(int err);
/* Short symbolic name of an MV_E* code ("MV_EINVAL"); never NULL. */
MV_API const char *mv_strerror_name(int err);

/* Version of the library linked at run time, as a string and as MV_VERSION. */
MV_API const char *mv_version(void);
MV_API uint32_t mv_version_number(void);

#ifdef __cplusplus
}
#endif
#endif
