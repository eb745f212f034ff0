/* memvirt/memvirt.h - everything public: include this one. */
#ifndef MEMVIRT_MEMVIRT_H
#define MEMVIRT_MEMVIRT_H

#include <memvirt/common.h>
#include <memvirt/platform.h>
#include <memvirt/mm.h>
#include <memvirt/posix.h>
#include <memvirt/p2m.h>
#include <memvirt/pv.h>
#include <memvirt/shadow.h>

#endif
