"""Realistic multi-modality brain-tumour phantom: the simulator's built-in default data.

Anatomy comes from the MNI152 2 mm template that ships with nilearn (grey- and white-matter
probability maps and the brain mask nilearn derives from the T1 template; loaded from package
files, never downloaded) and is prepared once per process (:func:`functools.lru_cache`):

- grey matter (GM) and white matter (WM) are the template's probability maps;
- CSF fills the rest of the intracranial envelope (the brain mask closed, filled and smoothed,
  plus a thin subarachnoid layer), so ventricles, sulci and the cortical surface are real;
- skull and scalp are shells around that envelope, from its signed distance map.

One case (:func:`make_phantom_anatomy`) draws a smooth affine + elastic deformation of that
anatomy, skull/scalp thicknesses, and, in about 85 % of cases, a tumour in white matter with
BraTS labels (1 = necrotic core, 2 = peritumoural oedema, 4 = enhancing rim; nested: oedema
outermost, then the enhancing rim, then the necrotic core) and a mass effect that pushes the
surrounding tissue away. It then samples the deformed anatomy on the output grid: a square
in-plane field of view fitted to the head, and a slab of ``D`` axial slices that contains the
tumour plus a margin at a random offset. Each output voxel averages sub-samples across the slice
thickness, so the result is a stack of partial-volume tissue fractions (:class:`Tissue`).

:func:`render_modality` turns the fractions into an image: T1/T1CE/T2/FLAIR from spin-echo and
inversion-recovery signal equations with per-tissue T1, T2 and proton density (gadolinium
shortens T1 in the enhancing rim for T1CE), CT in Hounsfield units, PET as amino-acid-like
uptake (tumour hot) and SPECT as Tc-99m HMPAO/ECD-like perfusion (grey matter hot, white matter
1/3-1/2 of it, CSF cold; hypo-perfused tumour core and oedema, a rim of case-dependent perfusion).
The acquisition (:class:`Acquisition`, fixed per site by :func:`site_acquisition`) adds the site's
sequence timing, bias field (MR) or attenuation-correction residual (SPECT), point-spread function
(SPECT 12-18 mm, PET 7-10 mm), noise (Rician for MR, Gaussian for CT, Poisson-like for PET,
Poisson counts for SPECT), global intensity scale and slice thickness. SPECT is not in the default
site cycle (:data:`SITE_MODALITIES`); a site asks for it by name.

:func:`write_phantom_site` writes a site as NIfTI or DICOM with ``datalist.json`` and a
manifest (an identical request reuses the files); :func:`make_phantom_federation` writes
``site-1/``, ``site-2/``, ... Everything is deterministic per seed.

Conventions: arrays are ``(H, W, D)`` in RAS order (``H`` left->right, ``W`` posterior->anterior,
``D`` axial slices inferior->superior) with affine ``diag(pixel, pixel, slice_thickness)`` plus a
translation (scanner millimetres, origin near the head centre). MR, PET and SPECT are positive
arbitrary units (MR background is the Rician noise floor, not zero); CT is in HU with air at
about -1000.
DICOM series use the standard axial orientation (``ImageOrientationPatient`` ``1\\0\\0\\0\\1\\0``,
LPS), one file per slice, explicit VR little endian, CT as int16 with ``RescaleIntercept``
-1024, MR/PET/SPECT as uint16 with ``RescaleSlope`` (1 for MR); SPECT as DICOM ``Modality`` NM.

The package, by concern (each name below is importable from ``omnifm.data.phantom``):

- :mod:`~omnifm.data.phantom.conventions`: site modalities, default shape, label values, file
  formats and the argument checks shared by the other modules;
- :mod:`~omnifm.data.phantom.acquisition`: per-site acquisition parameters and voxel spacing;
- :mod:`~omnifm.data.phantom.template`: the prepared MNI152 template;
- :mod:`~omnifm.data.phantom.tumour`: tumour shape, nesting, mass effect and BraTS labels;
- :mod:`~omnifm.data.phantom.anatomy`: one case's head pose, deformation and tissue fractions;
- :mod:`~omnifm.data.phantom.render`: MR/CT/PET/SPECT image formation;
- :mod:`~omnifm.data.phantom.volume_files`: NIfTI files and DICOM series of one volume;
- :mod:`~omnifm.data.phantom.site_writer`: site folders, datalist, manifest and federations.
"""

from __future__ import annotations

from omnifm.data.modalities import MODALITIES
from omnifm.data.phantom.acquisition import Acquisition, acquisition_spacing, site_acquisition
from omnifm.data.phantom.anatomy import TUMOUR_FREE_PROBABILITY, PhantomAnatomy, Tissue, make_phantom_anatomy
from omnifm.data.phantom.conventions import BRATS_LABELS, DEFAULT_SHAPE, FORMATS, SITE_MODALITIES, modality_for_site
from omnifm.data.phantom.render import make_phantom_case, render_modality
from omnifm.data.phantom.site_writer import (
    DATALIST_NAME,
    GENERATOR_VERSION,
    MANIFEST_NAME,
    make_phantom_federation,
    read_phantom_manifest,
    write_phantom_site,
)

__all__ = [
    "BRATS_LABELS",
    "DATALIST_NAME",
    "DEFAULT_SHAPE",
    "FORMATS",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "MODALITIES",
    "SITE_MODALITIES",
    "TUMOUR_FREE_PROBABILITY",
    "Acquisition",
    "acquisition_spacing",
    "make_phantom_anatomy",
    "make_phantom_case",
    "make_phantom_federation",
    "modality_for_site",
    "PhantomAnatomy",
    "read_phantom_manifest",
    "render_modality",
    "site_acquisition",
    "Tissue",
    "write_phantom_site",
]
