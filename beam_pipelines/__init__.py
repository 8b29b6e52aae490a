"""The pipelines (`python -m beam_pipelines.<name>`).

Google's client libraries, which apache_beam imports, print FutureWarnings about Python and grpcio versions
on every start; this package is imported before apache_beam, so the filter is set here. Only those: our
own warnings and every error still show.
"""

import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module=r"google(\.|$)")
