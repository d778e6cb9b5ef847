"""Focal-point crop: cut the target size out of a picture where its subject is.

Three kinds of points of interest, as in A1111's autocrop: corners (edges), the most detailed
window (entropy), and faces. Each kind that finds points contributes its centroid, weighted by
its weight over the sum of the weights of the kinds that found something; the crop is centred on
the weighted mean and kept inside the picture.

Done with numpy and scipy, so no OpenCV is needed. Faces need a detector: OpenCV's Haar cascade
is used when `cv2` is installed (it ships the cascade files, so it works offline); otherwise
faces are not looked for and `face_detection_available()` says so.

Departures from A1111, each a quirk there:
- the picture is scaled to *cover* the crop (A1111 scaled by one side only and could leave the
  crop larger than the picture);
- entropy is the Shannon entropy of the 256-level grey histogram (A1111 summed -log2(p) over a
  1-bit histogram, which rewards windows that are almost all black or all white), and the last
  window position is tried too;
- a picture with no point of interest is cropped at its centre (A1111 used the top-left corner).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ti.crops import cover_crop_resize

# A face detector takes a greyscale uint8 array (H x W) and returns boxes (x, y, width, height).
FaceDetector = Callable[[np.ndarray], Sequence[tuple[float, float, float, float]]]

MAX_CORNERS = 100  # A1111's goodFeaturesToTrack settings
CORNER_QUALITY = 0.04
CORNER_MIN_DISTANCE = 0.06  # of the short side
WATERMARK_BAND = 0.1  # bottom part painted grey before corner search: watermarks live there
ENTROPY_STEP = 4  # pixels between entropy windows
MAX_CORNER_CANDIDATES = 5000  # strongest local maxima kept before the min-distance pass


@dataclass(frozen=True)
class FocalWeights:
    """How much each kind of point of interest pulls the crop (A1111's defaults)."""

    faces: float = 0.9
    entropy: float = 0.15
    edges: float = 0.5


def focal_crop(
    image: Image.Image,
    width: int,
    height: int,
    weights: FocalWeights = FocalWeights(),
    face_detector: FaceDetector | None = None,
) -> Image.Image:
    """Crop width x height around the picture's focal point.

    Args:
        image: the source image (RGB).
        width, height: the output size.
        weights: pull of faces, entropy and edges.
        face_detector: finds faces; None looks for no faces.

    Returns:
        A width x height image. When the picture already has the target's aspect it is only resized.
    """
    scale = max(width / image.width, height / image.height)
    scaled_size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if scaled_size == (width, height):
        return cover_crop_resize(image, width, height)
    scaled = image.resize(scaled_size, Image.Resampling.LANCZOS)
    focus_x, focus_y = find_focal_point(scaled, width, height, weights, face_detector)
    left = int(min(max(focus_x - width / 2, 0), scaled.width - width))
    top = int(min(max(focus_y - height / 2, 0), scaled.height - height))
    return scaled.crop((left, top, left + width, top + height))


def find_focal_point(
    image: Image.Image,
    crop_width: int,
    crop_height: int,
    weights: FocalWeights = FocalWeights(),
    face_detector: FaceDetector | None = None,
) -> tuple[float, float]:
    """The weighted centre of the picture's points of interest.

    Args:
        image: the picture, already scaled so the crop fits it.
        crop_width, crop_height: the crop size (the entropy window).
        weights: pull of each kind of point.
        face_detector: finds faces; None skips faces.

    Returns:
        (x, y) in the image's pixels; the image centre when nothing was found.
    """
    point_sets: list[tuple[float, list[tuple[float, float]]]] = []
    if weights.edges > 0:
        point_sets.append((weights.edges, corner_points(image)))
    if weights.entropy > 0:
        point_sets.append((weights.entropy, entropy_points(image, crop_width, crop_height)))
    if weights.faces > 0 and face_detector is not None:
        point_sets.append((weights.faces, face_points(image, face_detector)))
    found = [(weight, points) for weight, points in point_sets if points]
    total_weight = sum(weight for weight, _ in found)
    if not found or total_weight <= 0:
        return image.width / 2, image.height / 2
    focus_x = sum(weight * np.mean([p[0] for p in points]) for weight, points in found) / total_weight
    focus_y = sum(weight * np.mean([p[1] for p in points]) for weight, points in found) / total_weight
    return float(focus_x), float(focus_y)


def corner_points(image: Image.Image) -> list[tuple[float, float]]:
    """Strong corners (Shi-Tomasi, like OpenCV's goodFeaturesToTrack with A1111's settings).

    The bottom tenth is painted mid-grey first so a watermark or signature does not win.

    Returns:
        Up to 100 (x, y) points, strongest first, at least 6% of the short side apart.
    """
    from scipy import ndimage  # here, not at the top: it costs half a second of every CLI start

    grey_image = image.convert("L")
    ImageDraw.Draw(grey_image).rectangle(
        (0, int(image.height * (1 - WATERMARK_BAND)), image.width, image.height), fill=153
    )
    grey = np.asarray(grey_image, dtype=np.float32)
    response = _min_eigenvalue(grey)
    strongest = float(response.max())
    if strongest <= 0:
        return []
    is_peak = (response == ndimage.maximum_filter(response, size=3)) & (response >= CORNER_QUALITY * strongest)
    ys, xs = np.nonzero(is_peak)
    order = np.argsort(-response[ys, xs], kind="stable")[:MAX_CORNER_CANDIDATES]
    min_distance = min(image.width, image.height) * CORNER_MIN_DISTANCE
    kept = np.empty((0, 2), dtype=np.float64)
    for index in order:
        candidate = np.array([xs[index], ys[index]], dtype=np.float64)
        if len(kept) and np.min(np.sum((kept - candidate) ** 2, axis=1)) < min_distance**2:
            continue
        kept = np.vstack([kept, candidate])
        if len(kept) == MAX_CORNERS:
            break
    return [(float(x), float(y)) for x, y in kept]


def _min_eigenvalue(grey: np.ndarray) -> np.ndarray:
    """Smaller eigenvalue of the 3x3 structure tensor at each pixel (OpenCV's cornerMinEigenVal)."""
    from scipy import ndimage

    gradient_x = ndimage.sobel(grey, axis=1, mode="mirror")
    gradient_y = ndimage.sobel(grey, axis=0, mode="mirror")
    xx = ndimage.uniform_filter(gradient_x * gradient_x, size=3, mode="mirror")
    yy = ndimage.uniform_filter(gradient_y * gradient_y, size=3, mode="mirror")
    xy = ndimage.uniform_filter(gradient_x * gradient_y, size=3, mode="mirror")
    half_trace = (xx + yy) / 2
    return half_trace - np.sqrt(((xx - yy) / 2) ** 2 + xy**2)


def entropy_points(image: Image.Image, crop_width: int, crop_height: int) -> list[tuple[float, float]]:
    """The centre of the crop-sized window with the most detail (grey-level entropy).

    The window slides 4 px at a time along the axis on which the picture is longer than the crop.

    Returns:
        One (x, y) point; none when the crop already fills the picture or all windows tie.
    """
    grey = np.asarray(image.convert("L"))
    if image.width > crop_width:
        lines, window, axis_length = grey.T, crop_width, image.width  # slide along x: one line per column
    elif image.height > crop_height:
        lines, window, axis_length = grey, crop_height, image.height
    else:
        return []
    # Histogram of each line, then running sums: a window's histogram is a difference of two.
    bins = np.repeat(np.arange(1, axis_length + 1), lines.shape[1]) * 256 + lines.ravel()
    line_histograms = np.bincount(bins, minlength=(axis_length + 1) * 256).reshape(axis_length + 1, 256)
    cumulative = np.cumsum(line_histograms, axis=0)  # row 0 stays empty: window [s, s+w) = c[s+w] - c[s]
    starts = list(range(0, axis_length - window + 1, ENTROPY_STEP))
    if starts[-1] != axis_length - window:
        starts.append(axis_length - window)
    entropies = [_shannon_entropy(cumulative[start + window] - cumulative[start]) for start in starts]
    if max(entropies) == min(entropies):
        return []  # every window as detailed as the next (a flat picture): no preference to give
    best_start = starts[int(np.argmax(entropies))]
    if image.width > crop_width:
        return [(best_start + crop_width / 2, image.height / 2)]
    return [(image.width / 2, best_start + crop_height / 2)]


def _shannon_entropy(histogram: np.ndarray) -> float:
    probabilities = histogram[histogram > 0] / histogram.sum()
    return float(-(probabilities * np.log2(probabilities)).sum())


def face_points(image: Image.Image, face_detector: FaceDetector) -> list[tuple[float, float]]:
    """One point per detected face: centred across, a third of the way down (eye level).

    Returns:
        (x, y) points; none when no face was found.
    """
    boxes = face_detector(np.asarray(image.convert("L")))
    return [(float(x + w / 2), float(y + h * 0.33)) for x, y, w, h in boxes]


def opencv_face_detector() -> FaceDetector | None:
    """OpenCV's frontal-face Haar cascade as a FaceDetector, or None when OpenCV is not installed.

    The cascade file ships inside the opencv-python wheel, so nothing is downloaded.
    """
    try:
        import cv2
    except ImportError:
        return None
    cascade_path = f"{cv2.data.haarcascades}haarcascade_frontalface_default.xml"
    classifier = cv2.CascadeClassifier(cascade_path)
    if classifier.empty():
        return None

    def detect_faces(grey: np.ndarray) -> list[tuple[float, float, float, float]]:
        min_side = max(1, int(min(grey.shape) * 0.05))  # ignore faces under 5% of the short side
        boxes = classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=7, minSize=(min_side, min_side))
        return [tuple(float(v) for v in box) for box in boxes]

    return detect_faces


def face_detection_available() -> bool:
    """Whether `opencv_face_detector()` can find faces on this installation."""
    return opencv_face_detector() is not None
