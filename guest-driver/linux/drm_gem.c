// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * virtio_accel: GEM objects of the accel device node, which are device
 * objects (spec §7.1) while they exist.
 *
 * An object created here is shmem memory, pinned from creation to its end;
 * one larger than max_segments pages comes from the driver's own tmpfs mount
 * with huge=always when it has one (so that its pages come in 2 MiB runs
 * where transparent huge pages are available). One imported from another
 * driver's dma-buf is that buffer, mapped for the virtio device from import
 * to its end. Either is registered with
 * OBJECT_CREATE, its memory given as segments: the guest-physical address
 * ranges of its pages (the device reaches guest memory without an IOMMU), or
 * of the dma-buf mapping, physically contiguous runs merged. It is destroyed
 * with OBJECT_DESTROY when freed, which is after every job that used it has
 * finished: a job holds a reference on each object it names (spec §7.2).
 *
 * A device reset forgets every object (spec §11): an object is registered
 * again when SUBMIT next names it (never from the deferred submission, which
 * may not allocate or wait: drm_submit.c). An object that cannot be
 * registered (the driver does not use objects, see vaccel_drm_objects(); it
 * has more contiguous runs than max_segments; or registering it fails after
 * a reset) is still usable if it is shmem memory: jobs then pass its pages as
 * direct buffers. An imported object has no pages to pass, so its jobs fail
 * with the registration's error.
 */
#include <linux/fs.h>
#include <linux/mount.h>
#include <linux/shmem_fs.h>
#include <linux/dma-buf.h>
#include <linux/mm.h>
#include <linux/overflow.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <drm/drm_drv.h>
#include <drm/drm_file.h>
#include <drm/drm_gem.h>
#include <drm/drm_print.h>
#include <drm/drm_vma_manager.h>
#include <drm/virtio_accel_drm.h>

#include "vaccel_drm.h"

static void vaccel_gem_free(struct drm_gem_object *obj);

static const struct drm_gem_object_funcs vaccel_gem_funcs = {
	.free = vaccel_gem_free,
	.print_info = drm_gem_shmem_object_print_info,
	.pin = drm_gem_shmem_object_pin,
	.unpin = drm_gem_shmem_object_unpin,
	.get_sg_table = drm_gem_shmem_object_get_sg_table,
	.vmap = drm_gem_shmem_object_vmap,
	.vunmap = drm_gem_shmem_object_vunmap,
	.mmap = drm_gem_shmem_object_mmap,
	.vm_ops = &drm_gem_shmem_vm_ops,
};

/* Every GEM object of the device, created or imported, is a vaccel_bo. */
struct drm_gem_object *vaccel_gem_create_object(struct drm_device *drm,
						size_t size)
{
	struct vaccel_bo *bo = kzalloc(sizeof(*bo), GFP_KERNEL);

	if (!bo)
		return ERR_PTR(-ENOMEM);
	bo->base.base.funcs = &vaccel_gem_funcs;
	/* The device may write the pages whenever a job runs. */
	bo->base.pages_mark_dirty_on_put = true;
	bo->size = size;
	mutex_init(&bo->lock);
	INIT_LIST_HEAD(&bo->zombie);
	return &bo->base.base;
}

/*
 * Appends the range [@addr, @addr + @len) to the @count segments of @segs,
 * merging it into the last one when it continues it. Returns the new count,
 * or -E2BIG when it would need more than @max segments.
 */
static int vaccel_seg_append(struct virtio_accel_mem_seg *segs, int count,
			     unsigned int max, u64 addr, u64 len)
{
	struct virtio_accel_mem_seg *last = count ? &segs[count - 1] : NULL;

	if (last && le64_to_cpu(last->addr) + le64_to_cpu(last->len) == addr) {
		le64_add_cpu(&last->len, len);
		return count;
	}
	if (count >= max)
		return -E2BIG;
	segs[count].addr = cpu_to_le64(addr);
	segs[count].len = cpu_to_le64(len);
	return count + 1;
}

/* The segments of a shmem object: its pages' guest-physical addresses. */
static int vaccel_bo_page_segments(struct vaccel_bo *bo,
				   struct virtio_accel_mem_seg *segs,
				   unsigned int max)
{
	pgoff_t i, npages = bo->base.base.size >> PAGE_SHIFT;
	int count = 0;

	for (i = 0; i < npages && count >= 0; i++)
		count = vaccel_seg_append(segs, count, max,
					  page_to_phys(bo->base.pages[i]),
					  PAGE_SIZE);
	return count;
}

/* The segments of an imported dma-buf: its mapping for the device. */
static int vaccel_bo_dma_segments(struct vaccel_bo *bo,
				  struct virtio_accel_mem_seg *segs,
				  unsigned int max)
{
	struct scatterlist *sg;
	u64 left = bo->size;
	unsigned int i;
	int count = 0;

	for_each_sgtable_dma_sg(bo->base.sgt, sg, i) {
		u64 len = min_t(u64, sg_dma_len(sg), left);

		if (!len)
			continue;
		count = vaccel_seg_append(segs, count, max, sg_dma_address(sg),
					  len);
		if (count < 0)
			return count;
		left -= len;
	}
	/* An exporter whose mapping is shorter than its buffer. */
	return left ? -EINVAL : count;
}

/*
 * Creates @bo's device object in the current generation. The caller is
 * inside drm_dev_enter() and holds vd->reset_lock (read) and bo->lock.
 */
static int vaccel_bo_register(struct vaccel_drm *vd, struct vaccel_bo *bo)
{
	const struct vaccel_info *info = vaccel_info(vd->vdev);
	struct virtio_accel_mem_seg *segs;
	unsigned int max;
	u32 handle;
	int count, err;

	WRITE_ONCE(bo->handle, 0);
	if (!bo->size || bo->size > info->max_object_size) {
		bo->direct_only = true;
		return -E2BIG;
	}
	max = bo->imported ? bo->base.sgt->nents :
			     bo->base.base.size >> PAGE_SHIFT;
	/* kvmalloc() refuses more than INT_MAX bytes. */
	max = min3(max, info->max_segments,
		   (unsigned int)(INT_MAX / sizeof(*segs)));
	segs = kvmalloc_array(max, sizeof(*segs), GFP_KERNEL);
	if (!segs)
		return -ENOMEM;
	if (bo->imported)
		count = vaccel_bo_dma_segments(bo, segs, max);
	else
		count = vaccel_bo_page_segments(bo, segs, max);
	/* Its pages are pinned: it has too many runs for good. */
	bo->direct_only = count == -E2BIG;
	if (count > 0)
		err = vaccel_object_create(vd->vdev, segs, count, &handle);
	else
		err = count ? count : -EINVAL;
	kvfree(segs);
	if (err)
		return err;
	WRITE_ONCE(bo->handle, handle);
	/* Pairs with vaccel_bo_current_handle(): @handle is set before. */
	smp_store_release(&bo->handle_gen, vd->generation);
	return 0;
}

/**
 * vaccel_bo_current_handle - the handle of @bo's device object, or 0
 * @vd: the device
 * @bo: the object
 *
 * Takes no lock and never registers: the deferred submission may use it.
 * The caller holds vd->reset_lock (read), so the generation is stable; a
 * registration racing with it gives the new handle or 0 (not registered).
 *
 * Return: the handle if @bo is a device object of the current generation,
 * 0 otherwise.
 */
u32 vaccel_bo_current_handle(struct vaccel_drm *vd, struct vaccel_bo *bo)
{
	/* Pairs with the release in vaccel_bo_register(). */
	u64 gen = smp_load_acquire(&bo->handle_gen);
	u32 handle = READ_ONCE(bo->handle);

	return vaccel_drm_objects(vd) && gen == vd->generation ? handle : 0;
}

/**
 * vaccel_bo_device_handle - the handle of @bo's device object
 * @vd: the device
 * @bo: the object
 * @handle: the handle, on success
 *
 * Registers @bo if it is not a device object of the current generation.
 * The caller is inside drm_dev_enter() and holds vd->reset_lock (read).
 *
 * Return: 0, -EOPNOTSUPP if the driver does not use objects
 * (vaccel_drm_objects()), -E2BIG if @bo can never be one (too large, too
 * many runs), or the error of the registration.
 */
int vaccel_bo_device_handle(struct vaccel_drm *vd, struct vaccel_bo *bo,
			    u32 *handle)
{
	int err = 0;

	if (!vaccel_drm_objects(vd))
		return -EOPNOTSUPP;
	mutex_lock(&bo->lock);
	if (bo->direct_only)
		err = -E2BIG;
	else if (!bo->handle || bo->handle_gen != vd->generation)
		err = vaccel_bo_register(vd, bo);
	*handle = bo->handle;
	mutex_unlock(&bo->lock);
	return err;
}

/* Registers a new object; the caller is inside drm_dev_enter(). */
static int vaccel_bo_register_new(struct vaccel_drm *vd, struct vaccel_bo *bo)
{
	u32 handle;
	int err;

	down_read(&vd->reset_lock);
	err = vaccel_bo_device_handle(vd, bo, &handle);
	up_read(&vd->reset_lock);
	return err;
}

/*
 * Destroys @bo's device object, if it has one. Returns false when the
 * device may still hold the object, whose memory must then stay until the
 * device is reset (kept in vd->zombies).
 */
static bool vaccel_bo_unregister(struct vaccel_drm *vd, struct vaccel_bo *bo)
{
	bool released = true;
	int idx, err;

	/* Removed: the core resets the device, which used it for no job. */
	if (!bo->handle || !drm_dev_enter(&vd->drm, &idx))
		return true;
	down_read(&vd->reset_lock);
	if (bo->handle_gen == vd->generation) {
		err = vaccel_object_destroy(vd->vdev, bo->handle);
		/* NoObject: the device holds no object of that handle. */
		if (err && err != -ENOENT) {
			drm_err_ratelimited(&vd->drm,
					    "cannot destroy object %u (%d): its memory is kept until the device is reset\n",
					    bo->handle, err);
			mutex_lock(&vd->zombies_lock);
			list_add_tail(&bo->zombie, &vd->zombies);
			mutex_unlock(&vd->zombies_lock);
			released = false;
		}
	}
	up_read(&vd->reset_lock);
	drm_dev_exit(idx);
	return released;
}

/* Frees @bo's memory: its pages, or its dma-buf attachment. */
static void vaccel_bo_release(struct vaccel_bo *bo)
{
	if (bo->pinned)
		drm_gem_shmem_unpin(&bo->base);
	mutex_destroy(&bo->lock);
	drm_gem_shmem_free(&bo->base);
}

static void vaccel_gem_free(struct drm_gem_object *obj)
{
	struct vaccel_bo *bo = to_vaccel_bo(obj);

	if (vaccel_bo_unregister(to_vaccel_drm(obj->dev), bo))
		vaccel_bo_release(bo);
}

/**
 * vaccel_release_zombies - free the objects kept for the device
 * @vd: the device
 *
 * Called once the device can no longer use them: it was reset (the caller
 * holds vd->reset_lock for writing), or the DRM device is released.
 */
void vaccel_release_zombies(struct vaccel_drm *vd)
{
	struct vaccel_bo *bo, *next;
	LIST_HEAD(zombies);

	mutex_lock(&vd->zombies_lock);
	list_splice_init(&vd->zombies, &zombies);
	mutex_unlock(&vd->zombies_lock);
	list_for_each_entry_safe(bo, next, &zombies, zombie) {
		list_del(&bo->zombie);
		vaccel_bo_release(bo);
	}
}

/*
 * A dma-buf of another driver, mapped for the virtio device by
 * drm_gem_prime_import(), becomes a device object. Where the driver does not
 * use objects (no OBJECTS capability, or VIRTIO_F_ACCESS_PLATFORM: the
 * mapping's addresses are not guest-physical) it would be of no use, so the
 * import fails with -EOPNOTSUPP.
 */
struct drm_gem_object *
vaccel_gem_prime_import_sg_table(struct drm_device *drm,
				 struct dma_buf_attachment *attach,
				 struct sg_table *sgt)
{
	struct vaccel_drm *vd = to_vaccel_drm(drm);
	struct drm_gem_object *obj;
	struct vaccel_bo *bo;
	int idx, err;

	if (!drm_dev_enter(drm, &idx))
		return ERR_PTR(-ENODEV);
	obj = drm_gem_shmem_prime_import_sg_table(drm, attach, sgt);
	if (IS_ERR(obj))
		goto out;
	bo = to_vaccel_bo(obj);
	bo->size = attach->dmabuf->size;
	bo->imported = true;
	err = vaccel_bo_register_new(vd, bo);
	if (err) {
		/* The caller unmaps @sgt and detaches. */
		bo->base.sgt = NULL;
		drm_gem_object_put(obj);
		obj = ERR_PTR(err);
	}
out:
	drm_dev_exit(idx);
	return obj;
}

/* A GEM object of @file, with a reference, or NULL. */
struct vaccel_bo *vaccel_bo_lookup(struct drm_file *file, u32 handle)
{
	struct drm_gem_object *obj = drm_gem_object_lookup(file, handle);

	if (!obj)
		return NULL;
	if (obj->funcs != &vaccel_gem_funcs) {
		drm_gem_object_put(obj);
		return NULL;
	}
	return to_vaccel_bo(obj);
}

/*
 * The driver's own tmpfs mount, with huge=always, for the GEM objects that
 * 4 KiB pages could not describe in max_segments segments: their pages then
 * come in 2 MiB runs where transparent huge pages are available. (Not
 * within_size: an object of 1 MiB would never get a huge page.) NULL (the
 * kernel's shmem mount) when it cannot be had.
 */
struct vfsmount *vaccel_gemfs_mount(void)
{
	char huge_opt[] = "huge=always";
	struct file_system_type *type;
	struct vfsmount *mnt;

	if (!IS_ENABLED(CONFIG_TRANSPARENT_HUGEPAGE))
		return NULL;
	type = get_fs_type("tmpfs");
	if (!type)
		return NULL;
	mnt = vfs_kern_mount(type, SB_KERNMOUNT, type->name, huge_opt);
	return IS_ERR(mnt) ? NULL : mnt;
}

/*
 * Moves a new object's (empty) shmem file onto @mnt. 6.12 has no
 * drm_gem_shmem_create_with_mnt(): the helper's file is replaced before
 * anything uses it, with the helper's gfp mask (pinned pages stay out of
 * ZONE_MOVABLE).
 */
static void vaccel_gem_move_to(struct drm_gem_object *obj, struct vfsmount *mnt)
{
	struct file *filp;

	if (!mnt)
		return;
	filp = shmem_file_setup_with_mnt(mnt, "drm mm object", obj->size,
					 VM_NORESERVE);
	if (IS_ERR(filp))
		return;
	mapping_set_gfp_mask(filp->f_mapping, GFP_HIGHUSER |
			     __GFP_RETRY_MAYFAIL | __GFP_NOWARN);
	fput(obj->filp);
	obj->filp = filp;
}

int vaccel_ioctl_gem_create(struct drm_device *drm, void *data,
			    struct drm_file *file)
{
	struct vaccel_drm *vd = to_vaccel_drm(drm);
	struct drm_vaccel_gem_create *args = data;
	struct drm_gem_shmem_object *shmem;
	struct vaccel_bo *bo;
	int idx, err;

	if (args->flags || !args->size ||
	    args->size > rounddown(SIZE_MAX, PAGE_SIZE))
		return -EINVAL;
	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;
	shmem = drm_gem_shmem_create(drm, args->size);
	if (IS_ERR(shmem)) {
		err = PTR_ERR(shmem);
		goto out;
	}
	bo = to_vaccel_bo(&shmem->base);
	if (args->size > (u64)vaccel_info(vd->vdev)->max_segments * PAGE_SIZE)
		vaccel_gem_move_to(&shmem->base, vd->gemfs);
	err = drm_gem_shmem_pin(shmem);
	bo->pinned = !err;
	if (!err) {
		err = vaccel_bo_register_new(vd, bo);
		/*
		 * Without objects, or with more runs than max_segments, jobs
		 * pass its pages as direct buffers.
		 */
		if (err == -EOPNOTSUPP || err == -E2BIG)
			err = 0;
	}
	if (!err)
		err = drm_gem_handle_create(file, &shmem->base, &args->handle);
	if (!err)
		args->size = shmem->base.size;
	drm_gem_object_put(&shmem->base);
out:
	drm_dev_exit(idx);
	return err;
}

int vaccel_ioctl_gem_info(struct drm_device *drm, void *data,
			  struct drm_file *file)
{
	struct vaccel_drm *vd = to_vaccel_drm(drm);
	struct drm_vaccel_gem_info *args = data;
	struct vaccel_bo *bo;

	if (args->flags)
		return -EINVAL;
	bo = vaccel_bo_lookup(file, args->handle);
	if (!bo)
		return -ENOENT;
	args->size = bo->size;
	args->mmap_offset = drm_vma_node_offset_addr(&bo->base.base.vma_node);
	if (bo->imported)
		args->flags |= DRM_VACCEL_GEM_IMPORTED;
	down_read(&vd->reset_lock);
	mutex_lock(&bo->lock);
	if (bo->handle && bo->handle_gen == vd->generation)
		args->flags |= DRM_VACCEL_GEM_REGISTERED;
	mutex_unlock(&bo->lock);
	up_read(&vd->reset_lock);
	drm_gem_object_put(&bo->base.base);
	return 0;
}
