"""Click round trip through the annotation page vs ``SamPredictor.predict``, same points, same run.

Starts ``samtriton annotate`` on a running server (or serves --repository on the embedded
tritonserver), drives Debian's headless Chromium (Selenium, /usr/bin/chromedriver), and for N
points alternates: one real mouse click on the page (timed in the page from mouseup until the
overlay is drawn) and one ``SamPredictor.predict`` at the same point in this process. The
image is set before timing (``set_image`` excluded from both). Prints a markdown table and
optionally saves a screenshot of the page.

    python scripts/annotate_bench.py --repository model_repository --model sam --clicks 20 \
        --screenshot docs/annotate.png
"""

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from annotate_app import chromium, running_app, wait_for  # noqa: E402 - the browser tests' helpers, reused


def _click(driver, x, y, background=False):
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "prompt-layer")
    w, h, iw, ih = driver.execute_script(
        "const r = document.getElementById('prompt-layer').getBoundingClientRect();"
        "return [r.width, r.height, window.annotator.width, window.annotator.height];"
    )
    before = driver.execute_script("return window.annotator.rtts.length")
    chain = ActionChains(driver).move_to_element_with_offset(canvas, int(x * w / iw - w / 2), int(y * h / ih - h / 2))
    (chain.context_click() if background else chain.click()).perform()
    wait_for(driver, f"window.annotator.rtts.length > {before} && !window.annotator.busy")
    return driver.execute_script("return window.annotator")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running samtriton server's gRPC address")
    where.add_argument("--repository", help="serve this model repository on the embedded tritonserver")
    parser.add_argument("--model", default="sam", help="deployment name (default: %(default)s)")
    parser.add_argument("--image", help="image file (default: scikit-image's astronaut)")
    parser.add_argument("--clicks", type=int, default=20, help="timed clicks (default: %(default)s)")
    parser.add_argument("--screenshot", help="save a screenshot of the page here")
    args = parser.parse_args(argv)

    from samtriton import SamPredictor
    from samtriton.server import EmbeddedTriton

    with contextlib.ExitStack() as stack:
        url = args.url
        if args.repository:
            server = stack.enter_context(EmbeddedTriton.on_free_ports(args.repository))
            url = server.grpc_url
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        photos = work / "photos"
        photos.mkdir()
        if args.image:
            shutil.copy(args.image, photos / Path(args.image).name)
        else:
            from skimage import data

            Image.fromarray(data.astronaut()).save(photos / "astronaut.png")
        image_path = next(photos.iterdir())
        app = stack.enter_context(running_app(url, photos, work / "out", work / "app.log", model=args.model))
        driver = chromium(1280, 800)
        stack.callback(driver.quit)
        driver.get(app.url + "/")
        wait_for(driver, "document.body.dataset.ready === '1'")
        wait_for(driver, "window.annotator.prepared", timeout=120)  # set_image done, before timing

        predictor = stack.enter_context(SamPredictor(url, model=args.model))
        predictor.set_image(str(image_path))
        height, width = predictor.original_size
        rng = np.random.default_rng(0)
        points = np.column_stack(
            [rng.uniform(0.1, 0.9, args.clicks + 3) * width, rng.uniform(0.1, 0.9, args.clicks + 3) * height]
        )
        page, app_side, sam_side, direct = [], [], [], []
        for i, (x, y) in enumerate(points):
            # Alternate which goes first, so neither always follows the other.
            for order in (0, 1) if i % 2 else (1, 0):
                if order == 0:
                    driver.find_element("id", "clear").click()
                    state = _click(driver, x, y)
                else:
                    start = time.perf_counter()
                    predictor.predict(
                        point_coords=np.array([[round(x, 1), round(y, 1)]]),
                        point_labels=np.array([1]),
                        multimask_output=True,
                    )
                    elapsed = (time.perf_counter() - start) * 1000
            if i < 3:  # warm-up: first requests on fresh connections
                continue
            page.append(state["lastRtt"]["page_ms"])
            app_side.append(state["lastRtt"]["server_ms"])
            sam_side.append(state["lastRtt"]["predict_ms"])
            direct.append(elapsed)

        if args.screenshot:
            driver.find_element("id", "clear").click()
            _click(driver, 0.48 * width, 0.25 * height)
            driver.find_element("id", "label").clear()
            driver.find_element("id", "label").send_keys("face")
            driver.find_element("id", "accept").click()
            wait_for(driver, "window.annotator.objects.length === 1")
            _click(driver, 0.25 * width, 0.62 * height)  # the suit
            _click(driver, 0.60 * width, 0.80 * height, background=True)  # not the helmet
            driver.save_screenshot(args.screenshot)

    med = statistics.median
    rows = [
        ("page click: mouseup -> overlay drawn (Chromium)", page),
        ("  of which the app (HTTP handler: predict + RLE + JSON)", app_side),
        ("  of which SamPredictor.predict inside the app", sam_side),
        ("SamPredictor.predict, same points, this process", direct),
    ]
    print(f"{len(page)} clicks on {image_path.name} ({width}x{height}), multimask (3 masks), set_image excluded\n")
    print("| | median ms | p90 ms |\n|---|---|---|")
    for name, values in rows:
        print(f"| {name} | {med(values):.1f} | {np.percentile(values, 90):.1f} |")
    print(f"\npage / SamPredictor.predict: {med(page) / med(direct):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
