"""LivePhoto-Wan2.1's defaults and ranges, free of torch so that `livephoto --help` can name them instantly."""

WAN_MIN_INTENSITY, WAN_MAX_INTENSITY = 1, 6  # 0 is the guidance's null level
WAN_DEFAULT_INTENSITY = 4  # the authors' pipeline default; their README uses 6, their script 3
WAN_DEFAULT_STEPS = 30
WAN_DEFAULT_GUIDANCE = 5.0
WAN_DEFAULT_ALPHA = 1.2  # their README's; their script's default is 1.4
WAN_MIN_ALPHA, WAN_MAX_ALPHA = 0.0, 4.0
WAN_DEFAULT_FRAMES, WAN_DEFAULT_HEIGHT, WAN_DEFAULT_WIDTH = 81, 480, 832
WAN_FPS = 25
