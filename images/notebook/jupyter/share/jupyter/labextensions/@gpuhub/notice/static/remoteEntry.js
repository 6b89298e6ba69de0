/*
 * @gpuhub/notice: the hub's warning, inside JupyterLab, before it stops this server
 * (GPU idle too long, time limit, GPU-hour budget), or what happened in it lately (a
 * kernel killed for reaching the memory limit: such a notice has no stop_at).
 *
 * It polls {baseUrl}api/gpuhub/notice (the gpuhub_notice server extension, which asks
 * the hub) and, while there is a notice, shows a banner at the top of the page:
 *
 *   <div id="gpuhub-notice" role="alert" data-reason="gpu-idle">
 *     <span class="gpuhub-notice-message">Your GPU has been idle for 25 min; ...</span>
 *     <span class="gpuhub-notice-countdown">Stops in 4:59</span>
 *   </div>
 *
 * Written by hand as a JupyterLab 4 federated extension, so the image needs no Node
 * build. What JupyterLab's page does with it (jupyterlab/static/bootstrap.js and
 * index.out.js):
 *   1. loads package.json's jupyterlab._build.load (this file) with a <script> tag;
 *   2. calls window._JUPYTERLAB["@gpuhub/notice"].init(shareScope) - the webpack
 *      share scope; this plugin uses no shared module (no `requires`), so init has
 *      nothing to take or give;
 *   3. calls get("./extension") (_build.extension) and then the factory it resolves
 *      to; the result is read as an ES module when it has `__esModule` (its `default`
 *      is the plugin or list of plugins), otherwise as the plugins themselves.
 * The Dockerfile renames this file to remoteEntry.<content hash>.js (and package.json
 * with it), as webpack would, so browsers never run a cached copy from an older image.
 *
 * Plain ES2018, no dependencies.
 */
(function () {
  'use strict';

  const NAME = '@gpuhub/notice';
  const POLL_MS = 15000;
  // A browser clock further off than this from the hub's would make a countdown to
  // stop_at wrong; then the countdown uses seconds_left instead (see deadlineOf).
  const CLOCK_SKEW_MS = 30000;
  const BANNER_ID = 'gpuhub-notice';
  const STYLE_ID = 'gpuhub-notice-style';
  const SHOWN_CLASS = 'gpuhub-notice-shown';

  // The banner sits above JupyterLab's shell, which is moved down by the banner's
  // height (kept in --gpuhub-notice-height) so that no menu or tab is covered. Fixed
  // colours rather than theme variables: the warning must read the same in every theme.
  const CSS = `
#${BANNER_ID} {
  position: fixed;
  top: 0;
  left: 0;
  right: 0;
  z-index: 9000; /* above the shell, below dialogs (10000) that dim the page */
  box-sizing: border-box;
  display: flex;
  flex-wrap: wrap;
  justify-content: center;
  align-items: baseline;
  gap: 2px 16px;
  padding: 6px 12px;
  background: #fff3cd;
  color: #3b2b00;
  border-bottom: 2px solid #d99a00;
  font-family: var(--jp-ui-font-family, system-ui, sans-serif);
  font-size: 13px;
  line-height: 1.4;
}
#${BANNER_ID} .gpuhub-notice-countdown {
  font-weight: 600;
  font-variant-numeric: tabular-nums;
  white-space: nowrap;
}
body.${SHOWN_CLASS} .jp-LabShell {
  top: var(--gpuhub-notice-height, 0px);
}
`;

  /** The page's configuration, as JupyterLab's server writes it into the page. */
  function pageConfig() {
    const el = document.getElementById('jupyter-config-data');
    try {
      return el ? JSON.parse(el.textContent || '{}') : {};
    } catch (error) {
      return {};
    }
  }

  function cookie(name) {
    for (const part of document.cookie.split(';')) {
      const eq = part.indexOf('=');
      if (eq > 0 && part.slice(0, eq).trim() === name) {
        return decodeURIComponent(part.slice(eq + 1).trim());
      }
    }
    return undefined;
  }

  /** GET the notice from this server, authenticated the way JupyterLab's own requests are. */
  async function fetchNotice(url, token) {
    const headers = { Accept: 'application/json' };
    // Under jupyterhub-singleuser a cookie-authenticated fetch() needs the _xsrf
    // cookie's value in a header, GETs included (fetch is not a page navigation).
    const xsrf = cookie('_xsrf');
    if (xsrf) {
      headers['X-XSRFToken'] = xsrf;
    }
    if (token) {
      headers.Authorization = `token ${token}`;
    }
    const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store', headers });
    if (!response.ok) {
      throw new Error(`${url} answered HTTP ${response.status}`);
    }
    return response.json();
  }

  /**
   * When the server stops, in this browser's clock (ms), or NaN when the notice has no time.
   * stop_at is exact when the browser's clock is right; seconds_left (as of the hub's
   * answer, at most a few seconds old) does not depend on that clock, so it wins when
   * the two disagree by more than a clock could honestly be off.
   */
  function deadlineOf(notice, receivedAt) {
    const byStopAt = notice.stop_at ? Date.parse(notice.stop_at) : NaN;
    const bySecondsLeft = typeof notice.seconds_left === 'number' ? receivedAt + notice.seconds_left * 1000 : NaN;
    if (Number.isNaN(byStopAt)) {
      return bySecondsLeft;
    }
    if (!Number.isNaN(bySecondsLeft) && Math.abs(byStopAt - bySecondsLeft) > CLOCK_SKEW_MS) {
      return bySecondsLeft;
    }
    return byStopAt;
  }

  /** 4:05, or 1:02:05 past an hour. */
  function formatLeft(ms) {
    const total = Math.max(0, Math.ceil(ms / 1000));
    const hours = Math.floor(total / 3600);
    const minutes = Math.floor((total % 3600) / 60);
    const seconds = String(total % 60).padStart(2, '0');
    return hours > 0 ? `${hours}:${String(minutes).padStart(2, '0')}:${seconds}` : `${minutes}:${seconds}`;
  }

  /** The banner: created when a notice arrives, removed when it clears. */
  class Banner {
    constructor() {
      this.node = null;
      this.deadline = NaN;
      this.ticker = 0;
      this.height = 0;
      // The shell must move when the banner's height changes (text wrapping on a
      // narrow window, a longer message).
      this.resizeObserver = typeof ResizeObserver === 'function' ? new ResizeObserver(() => this.fitShell()) : null;
    }

    show(notice, deadline) {
      if (!this.node) {
        this.create();
      }
      this.node.dataset.reason = notice.reason || '';
      // Only on change: role="alert" makes screen readers announce every new text.
      if (this.message.textContent !== notice.message) {
        this.message.textContent = notice.message;
      }
      this.deadline = deadline;
      this.tick();
      this.fitShell();
    }

    hide() {
      if (!this.node) {
        return;
      }
      clearInterval(this.ticker);
      if (this.resizeObserver) {
        this.resizeObserver.disconnect();
      }
      this.node.remove();
      this.node = null;
      this.fitShell();
    }

    create() {
      if (!document.getElementById(STYLE_ID)) {
        const style = document.createElement('style');
        style.id = STYLE_ID;
        style.textContent = CSS;
        document.head.appendChild(style);
      }
      this.node = document.createElement('div');
      this.node.id = BANNER_ID;
      this.node.setAttribute('role', 'alert');
      this.message = document.createElement('span');
      this.message.className = 'gpuhub-notice-message';
      this.countdown = document.createElement('span');
      this.countdown.className = 'gpuhub-notice-countdown';
      // The message already says when; a countdown read out every second would drown it.
      this.countdown.setAttribute('aria-live', 'off');
      this.node.append(this.message, this.countdown);
      document.body.prepend(this.node);
      if (this.resizeObserver) {
        this.resizeObserver.observe(this.node);
      }
      this.ticker = setInterval(() => this.tick(), 1000);
    }

    tick() {
      if (Number.isNaN(this.deadline)) {
        this.countdown.textContent = '';
        return;
      }
      const left = this.deadline - Date.now();
      this.countdown.textContent = left > 0 ? `Stops in ${formatLeft(left)}` : 'Stopping now';
    }

    /** Move JupyterLab's shell below the banner (or back up) and let it lay itself out again. */
    fitShell() {
      // Rounded up: offsetHeight rounds, and a shell a fraction of a pixel too high is covered.
      const height = this.node ? Math.ceil(this.node.getBoundingClientRect().height) : 0;
      if (height === this.height) {
        return;
      }
      this.height = height;
      document.documentElement.style.setProperty('--gpuhub-notice-height', `${height}px`);
      document.body.classList.toggle(SHOWN_CLASS, height > 0);
      // Lumino's application re-fits its shell on the window's resize event.
      window.dispatchEvent(new Event('resize'));
    }
  }

  /** A JupyterLab notification, once per notice, for the notification centre's record. */
  class Notifier {
    constructor(commands) {
      this.commands = commands;
      this.key = null;
      this.id = null;
    }

    update(notice) {
      // `at`: a second out-of-memory kill is news even though its reason is the same.
      const key = notice ? `${notice.reason}|${notice.stop_at}|${notice.at || ''}` : null;
      if (key === this.key) {
        return;
      }
      this.key = key;
      this.dismiss();
      if (notice && this.commands.hasCommand('apputils:notify')) {
        this.commands
          .execute('apputils:notify', { message: notice.message, type: 'warning', options: { autoClose: 15000 } })
          .then(id => {
            this.id = id;
          })
          .catch(error => console.warn(`${NAME}: no notification:`, error));
      }
    }

    dismiss() {
      if (this.id && this.commands.hasCommand('apputils:dismiss-notification')) {
        this.commands.execute('apputils:dismiss-notification', { id: this.id }).catch(() => undefined);
      }
      this.id = null;
    }
  }

  function activate(app) {
    const config = pageConfig();
    const baseUrl = (config.baseUrl || '/').replace(/\/?$/, '/');
    const url = `${baseUrl}api/gpuhub/notice`;
    const banner = new Banner();
    const notifier = app && app.commands ? new Notifier(app.commands) : null;
    let timer = 0;
    let polling = false;

    async function poll() {
      if (polling) {
        return;
      }
      polling = true;
      clearTimeout(timer);
      try {
        const answer = await fetchNotice(url, config.token);
        const notice = answer && answer.notice && typeof answer.notice.message === 'string' ? answer.notice : null;
        if (notice) {
          banner.show(notice, deadlineOf(notice, Date.now()));
        } else {
          banner.hide();
        }
        if (notifier) {
          notifier.update(notice);
        }
      } catch (error) {
        // This server did not answer (restarting, stopping, signed out): keep showing
        // what was last known; a stop in progress is exactly when the banner matters.
        console.debug(`${NAME}: no notice this time:`, error);
      } finally {
        polling = false;
        timer = setTimeout(poll, POLL_MS);
      }
    }

    // Browsers slow down timers in background tabs; catch up when the tab is looked at.
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') {
        poll();
      }
    });
    poll();
  }

  const plugin = {
    id: `${NAME}:plugin`,
    description: "Shows the hub's warning before it stops this server.",
    autoStart: true,
    activate
  };

  window._JUPYTERLAB = window._JUPYTERLAB || {};
  window._JUPYTERLAB[NAME] = {
    init(shareScope) {
      // Nothing to share: the plugin uses only the DOM and the app it is activated with.
    },
    get(module) {
      if (module === './extension') {
        return Promise.resolve(() => ({ __esModule: true, default: [plugin] }));
      }
      return Promise.reject(new Error(`${NAME} has no module ${module}`));
    }
  };
})();
