// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * virtio_accel: the accel device node (/dev/accel/accelN) of each virtio
 * accelerator, a client of the driver core (virtio_accel.h).
 *
 * GEM objects are device objects (spec §7.1, drm_gem.c); SUBMIT runs one
 * operation with fences in and out (drm_submit.c). spec/accel-uapi.md
 * documents the interface, include/uapi/drm/virtio_accel_drm.h declares it.
 */
#include <linux/dma-mapping.h>
#include <linux/mount.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <drm/drm_accel.h>
#include <drm/drm_drv.h>
#include <drm/drm_file.h>
#include <drm/drm_gem.h>
#include <drm/drm_ioctl.h>
#include <drm/drm_managed.h>
#include <drm/drm_print.h>
#include <drm/virtio_accel_drm.h>

#include "vaccel_drm.h"

static int vaccel_ioctl_get_info(struct drm_device *drm, void *data,
				 struct drm_file *file)
{
	struct vaccel_drm *vd = to_vaccel_drm(drm);
	struct drm_vaccel_info *args = data;
	const struct vaccel_info *info;
	int idx;

	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;
	info = vaccel_info(vd->vdev);
	*args = (struct drm_vaccel_info) {
		.num_request_queues = info->num_request_queues,
		.ops = info->ops,
		.max_segments = info->max_segments,
		.max_deps = info->max_deps,
		.max_objects = info->max_objects,
		.max_inflight = info->max_inflight,
		.max_object_size = info->max_object_size,
		.max_buffer_size = info->max_buffer_size,
		.capabilities = info->capabilities,
	};
	/* Objects the driver does not use are not offered (vaccel_drm.h). */
	if (!vaccel_drm_objects(vd))
		args->capabilities &= ~BIT_ULL(VIRTIO_ACCEL_F_OBJECTS);
	drm_dev_exit(idx);
	return 0;
}

static int vaccel_drm_open(struct drm_device *drm, struct drm_file *file)
{
	struct vaccel_file *vf = kzalloc(sizeof(*vf), GFP_KERNEL);

	if (!vf)
		return -ENOMEM;
	kref_init(&vf->ref);
	atomic_set(&vf->jobs, 0);
	file->driver_priv = vf;
	return 0;
}

/* The file's jobs may outlive it: they hold references of their own. */
static void vaccel_drm_postclose(struct drm_device *drm, struct drm_file *file)
{
	vaccel_file_put(file->driver_priv);
}

static const struct drm_ioctl_desc vaccel_drm_ioctls[] = {
	DRM_IOCTL_DEF_DRV(VACCEL_GET_INFO, vaccel_ioctl_get_info, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_GEM_CREATE, vaccel_ioctl_gem_create, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_GEM_INFO, vaccel_ioctl_gem_info, 0),
	DRM_IOCTL_DEF_DRV(VACCEL_SUBMIT, vaccel_ioctl_submit, 0),
};

DEFINE_DRM_ACCEL_FOPS(vaccel_drm_fops);

static const struct drm_driver vaccel_drm_driver = {
	.driver_features = DRIVER_COMPUTE_ACCEL | DRIVER_GEM | DRIVER_SYNCOBJ,
	.open = vaccel_drm_open,
	.postclose = vaccel_drm_postclose,
	.gem_create_object = vaccel_gem_create_object,
	.gem_prime_import_sg_table = vaccel_gem_prime_import_sg_table,
	.ioctls = vaccel_drm_ioctls,
	.num_ioctls = ARRAY_SIZE(vaccel_drm_ioctls),
	.fops = &vaccel_drm_fops,
	.name = "virtio_accel",
	.desc = "virtio accelerator",
	.major = 1,
	.minor = 0,
};

static struct vaccel_client vaccel_drm_client;

/*
 * Objects kept for the device are freed with the DRM device at the latest.
 * The objects' files hold references on the GEM mount of their own.
 */
static void vaccel_drm_release(struct drm_device *drm, void *data)
{
	struct vaccel_drm *vd = data;

	vaccel_release_zombies(vd);
	if (vd->gemfs)
		kern_unmount(vd->gemfs);
}

static int vaccel_drm_add(struct vaccel_device *dev)
{
	struct device *parent = vaccel_dev(dev);
	struct vaccel_drm *vd;
	int err;

	/*
	 * Imported dma-bufs are mapped for the virtio device, which reaches
	 * guest-physical memory without an IOMMU (no VIRTIO_F_ACCESS_PLATFORM,
	 * else objects are not used at all): with a DMA mask, dma-direct gives
	 * exactly those addresses.
	 */
	if (!parent->dma_mask) {
		err = dma_coerce_mask_and_coherent(parent, DMA_BIT_MASK(64));
		if (err)
			return err;
	}
	vd = devm_drm_dev_alloc(parent, &vaccel_drm_driver, struct vaccel_drm,
				drm);
	if (IS_ERR(vd))
		return PTR_ERR(vd);
	vd->vdev = dev;
	vd->access_platform = virtio_has_feature(dev_to_virtio(parent),
						 VIRTIO_F_ACCESS_PLATFORM);
	init_rwsem(&vd->reset_lock);
	INIT_LIST_HEAD(&vd->zombies);
	atomic64_set(&vd->next_job_id, 1);
	err = drmm_mutex_init(&vd->drm, &vd->zombies_lock);
	if (err)
		return err;
	err = drmm_add_action_or_reset(&vd->drm, vaccel_drm_release, vd);
	if (err)
		return err;
	vd->gemfs = vaccel_gemfs_mount();
	if (!vd->gemfs)
		drm_info(&vd->drm, "no huge tmpfs mount: GEM objects use 4 KiB pages\n");
	err = drm_dev_register(&vd->drm, 0);
	if (err)
		return err;
	vaccel_set_client_data(dev, &vaccel_drm_client, vd);
	return 0;
}

/* Every later ioctl fails with -ENODEV; open files and jobs keep vd. */
static void vaccel_drm_remove(struct vaccel_device *dev)
{
	struct vaccel_drm *vd = vaccel_client_data(dev, &vaccel_drm_client);

	if (!vd)
		return;
	vaccel_set_client_data(dev, &vaccel_drm_client, NULL);
	drm_dev_unplug(&vd->drm);
}

/*
 * The device lost its objects and its fences (spec §11): the handles and
 * fences of the previous generation are no longer used, objects are
 * registered again when a job next uses them (drm_gem.c), and the objects
 * kept because their destruction failed can go.
 */
static void vaccel_drm_reset(struct vaccel_device *dev)
{
	struct vaccel_drm *vd = vaccel_client_data(dev, &vaccel_drm_client);

	if (!vd)
		return;
	down_write(&vd->reset_lock);
	vd->generation++;
	vaccel_release_zombies(vd);
	up_write(&vd->reset_lock);
}

static struct vaccel_client vaccel_drm_client = {
	.add = vaccel_drm_add,
	.remove = vaccel_drm_remove,
	.reset = vaccel_drm_reset,
};

int vaccel_drm_init(void)
{
	int err;

	err = vaccel_jobs_init();
	if (err)
		return err;
	err = vaccel_register_client(&vaccel_drm_client);
	if (err)
		vaccel_jobs_exit();
	return err;
}

void vaccel_drm_exit(void)
{
	vaccel_unregister_client(&vaccel_drm_client);
	vaccel_jobs_exit();
}
