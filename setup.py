"""One distribution, ``vigie``: each top-level folder becomes a ``vigie.*`` subpackage."""

from Cython.Build import cythonize
from setuptools import Extension, setup

SUBPACKAGES = ("schemas", "operators", "models", "streams", "sinks")

# Folders inside subpackages (e.g. schemas/generator) are listed explicitly so that
# package_dir maps them too; nothing generic like "models" lands at the top of site-packages.
packages = ["vigie"] + [f"vigie.{name}" for name in SUBPACKAGES] + ["vigie.schemas.generator"]
package_dir = {"vigie": "vigie"} | {f"vigie.{name}": name for name in SUBPACKAGES}

# The Cython hot paths must compute the very doubles the Python they replace computed (the
# scores are compared bit for bit): no fused multiply-add contraction, and no builtin pow
# (GCC turns pow(x, 2.0) into x * x, which differs from libm's pow, CPython's, in the last bit).
EXACT_FLOATS = ["-ffp-contract=off", "-fno-builtin-pow"]
# The same optimisation level whichever interpreter builds them: extensions get the interpreter's
# own CFLAGS first (-O3 from a plain CPython build, -O2 from Debian's python3.11, see the Makefile).
OPTIMISE = ["-O3"]
HOT_PATHS = ("_robust", "_hst", "_score", "_undervaluation", "_atypical", "_behaviour", "_excise", "_ens_risk",
             "_ens_link", "_fusion", "_labels", "_pipeline")  # fmt: skip

extensions = [
    Extension(f"vigie.operators.{name}", [f"operators/{name}.pyx"], extra_compile_args=OPTIMISE + EXACT_FLOATS)
    for name in HOT_PATHS
]
# The sinks' encoder: records straight into ClickHouse Native blocks.
extensions.append(Extension("vigie.sinks._native_block", ["sinks/_native_block.pyx"], extra_compile_args=OPTIMISE))

setup(
    name="vigie",
    version="0.1.0",
    description="Event-driven streaming risk engine for customs administrations",
    python_requires=">=3.11,<3.12",
    packages=packages,
    package_dir=package_dir,
    package_data={"vigie.schemas.generator": ["*.json"], "vigie.sinks": ["*.sql"]},
    ext_modules=cythonize(extensions, language_level=3, compiler_directives={"boundscheck": False}),
    install_requires=[
        # Ranges that coexist: apache-flink 2.2.x pulls apache-beam, which caps numpy < 2.2,
        # which in turn holds river at 0.23.
        "apache-flink>=2.2.1,<2.3",
        "river>=0.23,<0.24",
        "numpy>=1.26,<2.2",
        "faust-streaming>=0.15.3,<0.16",
        # Faust's service framework; the worker's consumer overrides its Service.wait_first.
        "mode-streaming>=0.7.1,<0.8",
        "confluent-kafka>=2.16,<3",
        "clickhouse-driver>=0.2.11,<0.3",
        "chdb>=4.4,<5",
        "grafana-client>=5.1,<6",
        # Exact pin: the SDK's versions carry an epoch, so a range would pick an older release.
        "grafana-foundation-sdk==1769699379!11.6.0",
        "pydantic>=2.14,<2.15",
        "pycountry>=24",
        "typer>=0.29,<0.30",
        "rich>=14,<16",
        "orjson>=3.10,<4",
        "pyyaml>=6,<7",
        "matplotlib>=3.9,<4",
        "fastapi>=0.165,<0.166",
        "uvicorn>=0.54,<0.55",
        "python-multipart>=0.0.34,<0.1",
    ],
    extras_require={
        "test": [
            "pytest>=9,<10",
            "pytest-xdist>=3.8,<4",
            "pytest-timeout>=2.4,<3",
            "jsonschema>=4.26,<5",
            "ruff>=0.17,<0.18",
            "httpx>=0.28,<0.29",
            "playwright>=1.65,<2",
        ]
    },
    setup_requires=["cython>=3.3,<3.4"],
    entry_points={"console_scripts": ["vigie=vigie.streams.cli:main"]},
)
