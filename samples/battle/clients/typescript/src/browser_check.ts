// Drives the browser client in a real, headless Chromium for `--seconds` from the start of its
// match (at most a minute of waiting for the room to fill) and checks that the page's mirrored
// checksums match the server's: it exits 0 only when the page played, verified at least one
// checksum per second and found no desync; it saves a screenshot. With `--watch URL`, a second
// tab (the page as a spectator) is checked the same way, beside the first.
//
//   node dist/src/browser_check.js --page http://127.0.0.1:7780/?autoplay [--seconds 10]
//       [--screenshot battle.png] [--watch http://127.0.0.1:7780/?watch]
//       [--watch-screenshot spectator.png] [--chromium /usr/bin/chromium]

import { chromium, type Browser } from "playwright-core";

import type { PageState } from "./mirror.js";

/** Runs one tab of `url`; returns what went wrong (nothing: it passed). */
async function check(browser: Browser, label: string, url: string, seconds: number, screenshot?: string): Promise<string[]> {
  const tab = await browser.newPage({ viewport: { width: 560, height: 700 } });
  const errors: string[] = [];
  tab.on("pageerror", (error) => errors.push(error.message));
  await tab.goto(url);
  // Its `seconds` count from the match's start, however long the room took to fill.
  await tab.waitForFunction(
    "window.garrison !== undefined && (window.garrison.frames > 0 || window.garrison.error !== null)",
    null,
    { timeout: 60_000 },
  );
  await tab.waitForTimeout(seconds * 1000);
  const state = (await tab.evaluate("window.garrison")) as PageState | undefined;
  if (screenshot) await tab.screenshot({ path: screenshot });
  const problems: string[] = [...errors];
  if (state === undefined) problems.push("the page never started");
  else {
    if (state.error !== null) problems.push(state.error);
    if (state.verified < Math.floor(seconds)) problems.push(`only ${state.verified} checksums verified`);
    if (state.desyncs > 0) problems.push(`${state.desyncs} desyncs`);
    const last = state.lastChecksum;
    if (last === null || last.server !== last.mirrored) problems.push(`last checksum ${JSON.stringify(last)}`);
  }
  console.log(
    `${label}: ${state?.phase}, ${state?.frames} frames, ${state?.verified} checksums verified, ` +
      `${state?.desyncs} desyncs, last ${state?.lastChecksum?.server} = ${state?.lastChecksum?.mirrored}` +
      (problems.length ? `: FAILED: ${problems.join("; ")}` : ""),
  );
  return problems;
}

async function main(): Promise<number> {
  const args = new Map<string, string>();
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) args.set(argv[i], argv[i + 1] ?? "");
  const page = args.get("--page");
  if (!page) throw new Error("--page URL is required");
  const seconds = Number(args.get("--seconds") ?? "10");
  const browser = await chromium.launch({
    executablePath: args.get("--chromium") ?? "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  try {
    const tabs = [check(browser, "browser", page, seconds, args.get("--screenshot"))];
    const watch = args.get("--watch");
    if (watch) tabs.push(check(browser, "spectator", watch, seconds, args.get("--watch-screenshot")));
    const problems = (await Promise.all(tabs)).flat();
    return problems.length === 0 ? 0 : 1;
  } finally {
    await browser.close();
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(String(error));
    process.exit(2);
  },
);
