"""`bonefrac predict --dicom-out DIR`: the DICOM results (`report`) of the DICOM files a predict run reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bonefrac.dicom.report import StudyResults, read_source_header, save_dataset, study_digest
from bonefrac.errors import BonefracError
from bonefrac.io.read import is_dicom_file

if TYPE_CHECKING:
    from bonefrac.io.read import XrayImage
    from bonefrac.results import Prediction


class DicomResultsWriter:
    """`bonefrac predict --dicom-out DIR`: each DICOM view's overlay is written as it is predicted, each study's
    SR by `close` (a study's report needs all its views), all under `DIR/<study digest>/`."""

    def __init__(self, out_dir: str | Path, model_name: str, operating_points: dict[str, float] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.model_name = model_name
        self.operating_points = operating_points or {}
        self.studies: dict[str, StudyResults] = {}
        self.written: list[Path] = []
        self.not_dicom: list[str] = []
        self.problems: list[str] = []

    def add_prediction(self, pred: Prediction, image: XrayImage) -> None:
        """`add` for `bonefrac predict --dicom-out`, on the image already decoded: a non-DICOM input is noted once
        for `summary`, a DICOM file whose results cannot be made is noted with its reason; neither stops the run."""
        assert pred.path is not None
        try:
            if not self.add(pred.path, image, pred):
                self.not_dicom.append(pred.path)
        except BonefracError as e:
            self.problems.append(str(e))

    def summary(self) -> list[str]:
        """Lines for stderr after `close`: where the results are, non-DICOM inputs (said once), problems."""
        n_sr = sum(p.name.startswith("SR_") for p in self.written)
        lines = [f"DICOM results: {n_sr} reports and {len(self.written) - n_sr} overlays in {self.out_dir}"]
        if self.not_dicom:
            example = ", ".join(Path(p).name for p in self.not_dicom[:3]) + (", ..." if len(self.not_dicom) > 3 else "")
            lines.append(f"{len(self.not_dicom)} inputs are not DICOM ({example}): no DICOM results for them")
        return lines + self.problems

    def add(self, path: str | Path, image: XrayImage, pred: Prediction) -> bool:
        """The overlay of one predicted file; False (nothing written) when the file is not DICOM.
        Raises `ImageReadError` for a DICOM file whose header cannot place results in a study."""
        if not is_dicom_file(path):
            return False
        source = read_source_header(path)
        study = self.studies.setdefault(
            str(source.StudyInstanceUID), StudyResults(self.model_name, operating_points=self.operating_points)
        )
        sc = study.add_view(source, image, pred)
        self.written.append(save_dataset(sc, self.out_dir / study_digest(str(source.StudyInstanceUID))))
        return True

    def close(self) -> list[Path]:
        """Write every study's SR; returns all the files written (overlays and reports)."""
        for uid, study in self.studies.items():
            self.written.append(save_dataset(study.report(), self.out_dir / study_digest(uid)))
        self.studies = {}
        return self.written
