/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * virtio_accel: what the files of the accel device node share (drm.c, the
 * device and its ioctls; drm_gem.c, the GEM objects; drm_submit.c, the
 * jobs). spec/accel-uapi.md documents the interface they serve.
 */
#ifndef VACCEL_DRM_H
#define VACCEL_DRM_H

#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/types.h>
#include <drm/drm_device.h>
#include <drm/drm_gem_shmem_helper.h>

#include "virtio_accel.h"

struct dma_buf_attachment;
struct drm_file;
struct sg_table;
struct vfsmount;

/*
 * The accel device of one virtio device.
 *
 * @vdev may be used only inside drm_dev_enter(): the client's remove()
 * unplugs the DRM device before the virtio device goes away.
 *
 * @reset_lock orders the users of the device instance's handles and fences
 * (registration, submission, destruction: read) with resets (write): a
 * handle or fence is valid only in the @generation it was obtained in
 * (spec §11).
 */
struct vaccel_drm {
	struct drm_device drm;
	struct vaccel_device *vdev;
	struct rw_semaphore reset_lock;
	u64 generation;			/* resets seen; under reset_lock */
	bool access_platform;		/* VIRTIO_F_ACCESS_PLATFORM */
	struct vfsmount *gemfs;		/* for GEM objects, or NULL */
	struct mutex zombies_lock;
	struct list_head zombies;	/* objects the device may still use */
	atomic64_t next_job_id;
};

static inline struct vaccel_drm *to_vaccel_drm(struct drm_device *drm)
{
	return container_of(drm, struct vaccel_drm, drm);
}

/*
 * Whether GEM objects become device objects: the device has the OBJECTS
 * capability and reaches guest-physical addresses. With
 * VIRTIO_F_ACCESS_PLATFORM it reaches memory through the platform's DMA
 * translation, which object segments (spec §7.1) cannot express: objects are
 * then passed as direct buffers, mapped by the DMA API like all ring data.
 */
static inline bool vaccel_drm_objects(struct vaccel_drm *vd)
{
	return !vd->access_platform &&
	       (vaccel_info(vd->vdev)->capabilities &
		BIT_ULL(VIRTIO_ACCEL_F_OBJECTS));
}

/*
 * A GEM object: shmem pages of its own (pinned while it exists), or an
 * imported dma-buf (mapped for the device while it exists). It is a device
 * object (spec §7.1) while @handle is valid: @handle is not zero and
 * @handle_gen is the device's generation.
 */
struct vaccel_bo {
	struct drm_gem_shmem_object base;
	u64 size;			/* bytes requests may use */
	struct mutex lock;		/* registration; see below */
	u32 handle;			/* written under @lock */
	u64 handle_gen;			/* written under @lock, after @handle */
	bool direct_only;		/* never a device object; under @lock */
	bool imported;			/* a dma-buf of another driver */
	bool pinned;			/* shmem pages, pinned */
	struct list_head zombie;	/* in vaccel_drm.zombies */
};

static inline struct vaccel_bo *to_vaccel_bo(struct drm_gem_object *obj)
{
	return container_of(obj, struct vaccel_bo, base.base);
}

/* What each open file of the node owns. */
struct vaccel_file {
	struct kref ref;		/* the file and each of its jobs */
	atomic_t jobs;			/* jobs not finished */
};

/* drm_gem.c */
struct drm_gem_object *vaccel_gem_create_object(struct drm_device *drm,
						size_t size);
struct drm_gem_object *
vaccel_gem_prime_import_sg_table(struct drm_device *drm,
				 struct dma_buf_attachment *attach,
				 struct sg_table *sgt);
struct vaccel_bo *vaccel_bo_lookup(struct drm_file *file, u32 handle);
int vaccel_bo_device_handle(struct vaccel_drm *vd, struct vaccel_bo *bo,
			    u32 *handle);
u32 vaccel_bo_current_handle(struct vaccel_drm *vd, struct vaccel_bo *bo);
struct vfsmount *vaccel_gemfs_mount(void);
void vaccel_release_zombies(struct vaccel_drm *vd);
int vaccel_ioctl_gem_create(struct drm_device *drm, void *data,
			    struct drm_file *file);
int vaccel_ioctl_gem_info(struct drm_device *drm, void *data,
			  struct drm_file *file);

/* drm_submit.c */
int vaccel_jobs_init(void);
void vaccel_jobs_exit(void);
void vaccel_file_put(struct vaccel_file *vf);
int vaccel_ioctl_submit(struct drm_device *drm, void *data,
			struct drm_file *file);

#endif /* VACCEL_DRM_H */
